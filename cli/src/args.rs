//! The command-line surface, declared with clap's derive API.
//!
//! Values are kept as the user typed them; [`crate::request`] turns them into typed jobs so a
//! validation error names the job field (`instance-id: …`) exactly as the API would.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dfe_shared::config::AmqpUrls;

/// The `dfe` command line.
#[derive(Debug, Parser)]
#[command(
    name = "dfe",
    version,
    about = "Submit, follow and inspect DFE provisioning jobs",
    long_about = "Submit, follow and inspect DFE provisioning jobs.\n\n\
        Jobs go through the REST API (dfe-api) by default, or straight onto the RabbitMQ \
        exchange dfe.jobs with --via queue. The API token is read from --token-file or \
        DFE_TOKEN; `dfe token` mints one.",
    after_help = "Exit status: 0 success, 1 failure (job failed, service unreachable, timeout), \
        2 rejected input (invalid arguments or fields, or a 400/404/409/422 answer), \
        3 `dfe reconcile` found differences."
)]
pub struct Cli {
    /// Where to find the services and the token.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Configuration file; the CLI reads `amqp.url` and `api.listen` from it.
    #[arg(long, global = true, env = "DFE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Base URL of dfe-api [default: http://<api.listen>, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "DFE_API_URL", value_name = "URL")]
    pub api_url: Option<String>,

    /// File holding the API bearer token [default: the DFE_TOKEN environment variable].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// RabbitMQ URL, or the node URLs of a cluster separated by commas (the first that
    /// answers is used) [default: amqp.url of the config (or DFE__AMQP__URL), else
    /// amqp://guest:guest@127.0.0.1:5672/%2f].
    // No `env` here: clap would print the variable's value, which holds a password, in --help.
    #[arg(long, global = true, value_name = "URL[,URL…]", value_parser = parse_amqp_urls)]
    pub amqp_url: Option<AmqpUrls>,

    /// How provision/deprovision/import/export submit their job.
    #[arg(long, global = true, value_enum, default_value_t = Via::Api, value_name = "HOW")]
    pub via: Via,
}

/// How a job is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// POST it to dfe-api, which validates, records and publishes it.
    Api,
    /// Publish it straight onto the `dfe.jobs` exchange (the CLI assigns the job id).
    Queue,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision an instance: storage, database and container.
    Provision(ProvisionArgs),
    /// Deprovision an instance.
    Deprovision(DeprovisionArgs),
    /// Import a snapshot into an instance, provisioning it first when it does not exist.
    Import(ImportArgs),
    /// Export a snapshot of an instance.
    Export(ExportArgs),
    /// Suspend an instance: its container stopped, its database's logins refused.
    Suspend(SuspendArgs),
    /// Resume a suspended instance (done once it answers again).
    Resume(ResumeArgs),
    /// Move a running instance to another Docker host (and its database to another server).
    #[command(long_about = "Move a running instance to another Docker host, under the same instance id: \
its container is stopped, its storage (and with --database-server its database) copied to the target, a \
new container started there and the record switched, then the old parts removed. The instance does not \
answer from the stop until the new container answers. A failure before the switch leaves it running where \
it was, with nothing left on the target. Without --host the cluster's placement chooses among its other \
active hosts. Needs a token with the admin scope.")]
    Move(MoveArgs),
    /// Show one job, or list the jobs.
    Jobs(JobsArgs),
    /// Cancel a job that has not started (queued or retrying): it ends failed with
    /// error.code `cancelled`, and its claim on the instance is handed back.
    Cancel(CancelArgs),
    /// Show one instance, or list the instances.
    Instances(InstancesArgs),
    /// Show one snapshot, list them, or download one.
    Snapshots(SnapshotsArgs),
    /// Tail the events published on dfe.events.
    Events(EventsArgs),
    /// List the Docker hosts and database servers, or cordon or uncordon a host.
    Hosts(HostsArgs),
    /// Show what the expiry schedule will do and when (--dry-run), or set an instance's expiry.
    #[command(long_about = "Show what the expiry schedule will do and when (--dry-run): each instance \
        with an expiry, the warnings (dfe.instance.expiring) still to come and the job submitted at \
        the expiry, computed as the workers' schedule computes them; `due` steps happen at its next \
        run. Nothing is changed.\n\n\
        With an instance id and --at, sets that instance's expiry instead: an RFC 3339 time, \
        +N followed by s, m, h or d (from now), or `never` to clear it.")]
    Expire(ExpireArgs),
    /// Show an owner's instances by state against its quota.
    Owner(OwnerArgs),
    /// Mint an API bearer token and print its SHA-256 for the configuration.
    Token(TokenArgs),
    /// Ask the workers, through the API, to compare the registry with the Docker hosts and
    /// database servers: report orphans, missing parts, stuck jobs and abandoned instances
    /// (exit 3 when anything differs); --fix repairs them. Needs only the API and a token,
    /// like the other commands.
    #[command(long_about = "Ask the workers, through the API, to compare the registry with the Docker \
        hosts and database servers: report orphans, missing parts, stuck jobs and instances left \
        mid-operation by jobs that ended (exit 0 when everything agrees, 3 when anything differs, \
        1 when the reconciliation failed); --fix repairs them.\n\n\
        A worker runs it (POST /api/v1/reconcile) and the API returns its report: dfe needs only \
        the API and a token, like the other commands, not the workers' configuration. \
        --last prints the report of the last reconciliation that finished, the workers' periodic \
        ones included.")]
    Reconcile(ReconcileArgs),
    /// Print a shell completion script for dfe.
    #[command(after_help = "Install it with, for example:\n  \
        bash: dfe completions bash > /etc/bash_completion.d/dfe\n  \
        zsh:  dfe completions zsh > \"${fpath[1]}/_dfe\"\n  \
        fish: dfe completions fish > ~/.config/fish/completions/dfe.fish")]
    Completions(CompletionsArgs),
}

/// `dfe reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Remove orphans, fail stuck jobs (with their failure events) and mark abandoned
    /// instances failed, so a deprovision can finish them.
    #[arg(long, conflicts_with = "last")]
    pub fix: bool,
    /// Print the last reconciliation that finished instead of asking for one.
    #[arg(long)]
    pub last: bool,
    /// Print the API's JSON (the whole reconciliation record) instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for a worker to finish the reconciliation.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        conflicts_with = "last",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,
}

/// `dfe provision`.
#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// Docker cluster to place the instance on.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// DFE's owner type, recorded as given (a number or a tag).
    #[arg(long, value_name = "T")]
    pub owner_type: Option<String>,
    /// An offering choice, offering id = item value (repeatable), e.g. --offering image=test.
    #[arg(long = "offering", value_name = "K=V", value_parser = parse_offering)]
    pub offerings: Vec<(String, String)>,
    /// A package to install into the instance (repeatable), recorded as given.
    #[arg(long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Owner of the instance: digits are a numeric id, anything else a tag.
    pub owner_id: String,
    /// Instance id: a DNS label of 3-63 characters.
    pub instance_id: String,
    /// Provisioner tag [default: provisioners.default of the service].
    pub guest_location: Option<String>,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe deprovision`.
#[derive(Debug, Clone, Args)]
pub struct DeprovisionArgs {
    /// Docker cluster of the instance [default: the one it was placed on].
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Keep the instance's database and its role.
    #[arg(long)]
    pub keep_database: bool,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The instance to remove.
    pub instance_id: String,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Docker cluster for an instance that must be created.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// DFE's owner type, recorded as given (a number or a tag).
    #[arg(long, value_name = "T")]
    pub owner_type: Option<String>,
    /// Empty the instance's storage before restoring into it.
    #[arg(long)]
    pub clean: bool,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Owner of the instance: digits are a numeric id, anything else a tag.
    pub owner_id: String,
    /// The instance to restore into.
    pub instance_id: String,
    /// Snapshot id in the snapshot store.
    pub snapshot: String,
    /// Provisioner tag for an instance that must be created.
    pub guest_location: Option<String>,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A named snapshot destination [default: the snapshot store].
    #[arg(long, value_name = "D")]
    pub destination: Option<String>,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The instance to export.
    pub instance_id: String,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe suspend`.
#[derive(Debug, Clone, Args)]
pub struct SuspendArgs {
    /// Why (recorded with the job, e.g. non-payment).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The instance to suspend.
    pub instance_id: String,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe move`.
#[derive(Debug, Clone, Args)]
pub struct MoveArgs {
    /// The Docker host to move it to.
    #[arg(long = "host", value_name = "HOST-ID")]
    pub host_id: Option<String>,
    /// The cluster to move it to (its placement chooses the host); its own when absent.
    #[arg(long = "cluster", visible_alias = "cluster-id", value_name = "CLUSTER-ID")]
    pub cluster_id: Option<String>,
    /// Move its database to this server too (one of its provisioner's); it stays when absent.
    #[arg(long, value_name = "SERVER-ID")]
    pub database_server: Option<String>,
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The instance to move.
    pub instance_id: String,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// `dfe resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// Job id to use instead of one assigned by the API (or generated for --via queue).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The instance to resume.
    pub instance_id: String,
    /// How to submit and follow it.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// Submission options shared by the operations.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// Follow the job to its final event; exit 0 on success, 1 on failure or timeout.
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits for the final event.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300,
        requires = "wait",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,
    /// Sent as the Idempotency-Key header: the same key returns the same job (API only).
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
}

/// `dfe cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The job to cancel.
    pub job_id: String,
    /// Print the API's JSON (the cancelled job) instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// How many rows of a list, and which page: the same for every list.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Rows per page, 1 to 1000 [default: the API's, 100].
    #[arg(long, value_name = "N", value_parser = limit_parser())]
    pub limit: Option<u16>,
    /// Every page: follow the API's cursors to the end of the list (each row once, even while
    /// rows are added).
    #[arg(long)]
    pub all: bool,
}

/// `dfe jobs`.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// A job id; the newest jobs when absent.
    pub job_id: Option<String>,
    /// List only the jobs of this instance.
    #[arg(long, value_name = "ID", conflicts_with = "job_id")]
    pub instance_id: Option<String>,
    /// List only the jobs of this owner.
    #[arg(long, value_name = "ID", conflicts_with = "job_id")]
    pub owner_id: Option<String>,
    /// List only the jobs in this state.
    #[arg(long, value_name = "STATE", conflicts_with = "job_id",
          value_parser = ["queued", "running", "retrying", "succeeded", "failed"])]
    pub state: Option<String>,
    /// List only the jobs of this kind.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "job_id",
          value_parser = ["provision", "deprovision", "import", "export"])]
    pub kind: Option<String>,
    /// Which rows.
    #[command(flatten)]
    pub page: PageArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dfe hosts`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostsArgs {
    /// Cordon or uncordon a host; the hosts and database servers when absent.
    #[command(subcommand)]
    pub action: Option<HostsCommand>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Subcommands of `dfe hosts`.
#[derive(Debug, Clone, Subcommand)]
pub enum HostsCommand {
    /// The host takes no new instances; the ones on it stay.
    Cordon {
        /// The host id (`dfe hosts` lists them).
        host_id: String,
    },
    /// The host takes new instances again.
    Uncordon {
        /// The host id.
        host_id: String,
    },
}

/// `dfe expire`.
#[derive(Debug, Clone, Args)]
pub struct ExpireArgs {
    /// Show what the schedule would do, and when, without changing anything.
    #[arg(long, conflicts_with_all = ["instance_id", "at"])]
    pub dry_run: bool,
    /// With --dry-run: only this owner's instances.
    #[arg(long, value_name = "ID", requires = "dry_run")]
    pub owner_id: Option<String>,
    /// The instance whose expiry --at sets.
    #[arg(requires = "at")]
    pub instance_id: Option<String>,
    /// The expiry: RFC 3339 (2027-01-31T12:00:00Z), +N[s|m|h|d] from now, or `never`.
    #[arg(long, value_name = "WHEN", requires = "instance_id")]
    pub at: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dfe owner`.
#[derive(Debug, Clone, Args)]
pub struct OwnerArgs {
    /// The owner id.
    pub owner_id: String,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dfe instances`.
#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    /// An instance id; the newest instances when absent.
    pub instance_id: Option<String>,
    /// List deprovisioned instances too (before cursors, `--all` meant this; it now means
    /// every page, as for the other lists).
    #[arg(long, conflicts_with = "instance_id")]
    pub include_removed: bool,
    /// List only the instances of this owner.
    #[arg(long, value_name = "ID", conflicts_with = "instance_id")]
    pub owner_id: Option<String>,
    /// List only the instances in this state.
    #[arg(long, value_name = "STATE", conflicts_with = "instance_id",
          value_parser = ["provisioning", "provisioned", "deprovisioning", "deprovisioned", "failed"])]
    pub state: Option<String>,
    /// List only the instances on this Docker host.
    #[arg(long, value_name = "ID", conflicts_with = "instance_id")]
    pub host_id: Option<String>,
    /// Which rows.
    #[command(flatten)]
    pub page: PageArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dfe snapshots`.
#[derive(Debug, Clone, Args)]
// `dfe snapshots download ID` is the subcommand; any other first word is a snapshot id.
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotsArgs {
    /// What to do with a snapshot other than showing it.
    #[command(subcommand)]
    pub action: Option<SnapshotsCommand>,
    /// A snapshot id; the newest snapshots when absent.
    pub snapshot_id: Option<String>,
    /// List only the snapshots of this instance.
    #[arg(long, value_name = "ID", conflicts_with = "snapshot_id")]
    pub instance_id: Option<String>,
    /// List only the snapshots of this owner.
    #[arg(long, value_name = "ID", conflicts_with = "snapshot_id")]
    pub owner_id: Option<String>,
    /// Which rows.
    #[command(flatten)]
    pub page: PageArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Subcommands of `dfe snapshots`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotsCommand {
    /// Download a snapshot's archive (.snapshot.tar.gz), checked against its recorded SHA-256.
    Download(DownloadArgs),
    /// Delete a snapshot: its archive in its destination, then its registry row (admin).
    Delete(DeleteArgs),
    /// Remove the schedules' snapshots beyond their retention (keep-last, keep-days), or with
    /// --dry-run show what would go (admin).
    #[command(long_about = "Remove the schedules' snapshots beyond their retention: each schedule keeps, \
        of each instance, its keep-last newest snapshots and those younger than keep-days; an \
        instance's newest snapshot always stays, and snapshots a client exported are never \
        considered. Archive and registry row go together. --dry-run only shows what would go. \
        The workers running the schedules prune the same way on their own; this is for an \
        operator who changed a retention, or wants to see it.")]
    Prune(PruneArgs),
}

/// `dfe snapshots delete`.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The snapshot to delete.
    pub snapshot_id: String,
    /// Print the API's JSON (the deleted snapshot's record).
    #[arg(long)]
    pub json: bool,
}

/// `dfe snapshots prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Remove nothing: show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dfe snapshots download`.
#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// The snapshot to download.
    pub snapshot_id: String,
    /// Where to write it; `-` for standard output [default: <ID>.snapshot.tar.gz here].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite FILE when it exists.
    #[arg(long)]
    pub force: bool,
}

/// `dfe completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `dfe events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Topic binding key selecting the events, e.g. `dfe.*.failed` or `dfe.storage.#`.
    #[arg(default_value = "dfe.#")]
    pub pattern: String,
    /// Print each event's raw JSON body on one line.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 after this many events (default: run until Ctrl-C).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// `dfe token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Client id for the [[api.clients]] entry (letters, digits, '.', '_', '-').
    #[arg(long, value_name = "ID", default_value = "cli")]
    pub client_id: String,
    /// A scope the token gets (repeatable): read (every GET), ops (submissions, cancel),
    /// admin (hosts, reconciliation) [default: all three].
    #[arg(long = "scope", value_name = "SCOPE", value_parser = ["read", "ops", "admin"])]
    pub scopes: Vec<String>,
    /// An owner whose instances, jobs and snapshots the token may see and act for
    /// (repeatable) [default: every owner].
    #[arg(long = "owner", value_name = "OWNER-ID")]
    pub owners: Vec<String>,
    /// How long the token is accepted, e.g. 90m, 12h, 30d [default: no expiry].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<std::time::Duration>,
    /// Mint nothing: print the entry for the existing token (from --token-file, DFE_TOKEN or
    /// standard input) instead.
    #[arg(long)]
    pub digest: bool,
}

/// A duration as `<number><unit>`: `s`, `m`, `h` or `d` (e.g. `30d`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let unit = s.chars().last().ok_or("expected a duration such as 30d, 12h, 90m or 45s")?;
    let secs_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{s:?}: expected a number and a unit s, m, h or d (e.g. 30d)")),
    };
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| format!("{s:?}: expected a whole number before the unit"))?;
    if n == 0 {
        return Err("a duration must be more than zero".into());
    }
    n.checked_mul(secs_per).map(std::time::Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"))
}

/// `--limit`: 1 to 1000, the range the API serves.
fn limit_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..=1000)
}

/// Parses `--amqp-url`: one URL or a comma-separated list of a cluster's nodes.
fn parse_amqp_urls(s: &str) -> Result<AmqpUrls, String> {
    AmqpUrls::parse(s).map_err(|e| e.to_string())
}

/// Parses `K=V` of `--offering`.
fn parse_offering(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("expected OFFERING=VALUE (e.g. image=test), got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn offerings_are_key_value_pairs() {
        assert_eq!(parse_offering("image=test"), Ok(("image".into(), "test".into())));
        assert_eq!(parse_offering("url=http://x/?a=b"), Ok(("url".into(), "http://x/?a=b".into())));
        assert!(parse_offering("image").is_err());
        assert!(parse_offering("=test").is_err());
        assert!(parse_offering("image=").is_err());
    }

    #[test]
    fn global_options_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["dfe", "deprovision", "acme-1", "--via", "queue"]).expect("parses");
        assert_eq!(cli.global.via, Via::Queue);
    }

    #[test]
    fn snapshots_take_an_id_or_the_download_subcommand() {
        let cli = Cli::try_parse_from(["dfe", "snapshots", "snap-1", "--json"]).expect("parses");
        let Command::Snapshots(a) = cli.command else { panic!("not snapshots") };
        assert_eq!((a.snapshot_id.as_deref(), a.action.is_none(), a.json), (Some("snap-1"), true, true));
        let cli = Cli::try_parse_from(["dfe", "snapshots", "download", "snap-1", "-o", "-"]).expect("parses");
        let Command::Snapshots(a) = cli.command else { panic!("not snapshots") };
        let Some(SnapshotsCommand::Download(d)) = a.action else { panic!("not download") };
        assert_eq!((d.snapshot_id.as_str(), d.output), ("snap-1", Some(PathBuf::from("-"))));
        let cli = Cli::try_parse_from(["dfe", "snapshots", "prune", "--dry-run"]).expect("parses");
        let Command::Snapshots(a) = cli.command else { panic!("not snapshots") };
        assert!(matches!(a.action, Some(SnapshotsCommand::Prune(PruneArgs { dry_run: true, json: false }))));
        let cli = Cli::try_parse_from(["dfe", "snapshots", "delete", "snap-1"]).expect("parses");
        let Command::Snapshots(a) = cli.command else { panic!("not snapshots") };
        assert!(
            matches!(a.action, Some(SnapshotsCommand::Delete(DeleteArgs { ref snapshot_id, .. })) if snapshot_id == "snap-1")
        );
        // Filters are for the list, not for one snapshot.
        assert!(Cli::try_parse_from(["dfe", "snapshots", "snap-1", "--instance-id", "acme-1"]).is_err());
        assert!(Cli::try_parse_from(["dfe", "snapshots", "--owner-id", "7", "--limit", "1001"]).is_err());
        let cli = Cli::try_parse_from(["dfe", "snapshots", "--all", "--limit", "10"]).expect("parses");
        let Command::Snapshots(a) = cli.command else { panic!("not snapshots") };
        assert_eq!((a.page.all, a.page.limit), (true, Some(10)));
    }

    #[test]
    fn instances_take_all_pages_and_removed_ones_apart() {
        let cli = Cli::try_parse_from(["dfe", "instances", "--all", "--include-removed"]).expect("parses");
        let Command::Instances(a) = cli.command else { panic!("not instances") };
        assert_eq!((a.page.all, a.include_removed), (true, true));
        assert!(Cli::try_parse_from(["dfe", "instances", "--state", "gone"]).is_err());
        assert!(Cli::try_parse_from(["dfe", "jobs", "--type", "provision", "--state", "queued"]).is_ok());
    }

    #[test]
    fn token_rights_and_durations_parse() {
        let cli = Cli::try_parse_from(["dfe", "token", "--scope", "read", "--owner", "7", "--expires-in", "30d"])
            .expect("parses");
        let Command::Token(t) = cli.command else { panic!("not token") };
        assert_eq!((t.scopes, t.owners), (vec!["read".to_owned()], vec!["7".to_owned()]));
        assert_eq!(t.expires_in, Some(std::time::Duration::from_secs(30 * 86_400)));
        assert!(Cli::try_parse_from(["dfe", "token", "--scope", "root"]).is_err());
        for (text, secs) in [("45s", 45), ("90m", 5400), ("12h", 43_200)] {
            assert_eq!(parse_duration(text), Ok(std::time::Duration::from_secs(secs)));
        }
        for bad in ["", "30", "d", "0d", "1.5h", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reconcile_asks_or_shows_the_last_one() {
        let cli = Cli::try_parse_from(["dfe", "reconcile", "--fix", "--timeout", "30"]).expect("parses");
        let Command::Reconcile(a) = cli.command else { panic!("not reconcile") };
        assert_eq!((a.fix, a.last, a.timeout), (true, false, 30));
        let cli = Cli::try_parse_from(["dfe", "reconcile", "--last", "--json"]).expect("parses");
        let Command::Reconcile(a) = cli.command else { panic!("not reconcile") };
        assert_eq!((a.last, a.json, a.timeout), (true, true, 120));
        assert!(Cli::try_parse_from(["dfe", "reconcile", "--last", "--fix"]).is_err());
        assert!(Cli::try_parse_from(["dfe", "reconcile", "--timeout", "0"]).is_err());
    }

    #[test]
    fn timeout_needs_wait() {
        assert!(Cli::try_parse_from(["dfe", "export", "acme-1", "--timeout", "5"]).is_err());
        assert!(Cli::try_parse_from(["dfe", "export", "acme-1", "--wait", "--timeout", "5"]).is_ok());
    }
}
