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
    /// Show one job, or list the jobs.
    Jobs(JobsArgs),
    /// Show one instance, or list the instances.
    Instances(InstancesArgs),
    /// Show one snapshot, list them, or download one.
    Snapshots(SnapshotsArgs),
    /// Tail the events published on dfe.events.
    Events(EventsArgs),
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

/// `dfe jobs`.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// A job id; the newest jobs when absent.
    pub job_id: Option<String>,
    /// List only the jobs of this instance.
    #[arg(long, value_name = "ID", conflicts_with = "job_id")]
    pub instance_id: Option<String>,
    /// List at most this many jobs [default: the API's, 100].
    #[arg(long, value_name = "N", conflicts_with = "job_id", value_parser = limit_parser())]
    pub limit: Option<u16>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dfe instances`.
#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    /// An instance id; the newest instances when absent.
    pub instance_id: Option<String>,
    /// List deprovisioned instances too.
    #[arg(long, conflicts_with = "instance_id")]
    pub all: bool,
    /// List at most this many instances [default: the API's, 100].
    #[arg(long, value_name = "N", conflicts_with = "instance_id", value_parser = limit_parser())]
    pub limit: Option<u16>,
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
    /// List at most this many snapshots [default: the API's, 100].
    #[arg(long, value_name = "N", conflicts_with = "snapshot_id", value_parser = limit_parser())]
    pub limit: Option<u16>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Subcommands of `dfe snapshots`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotsCommand {
    /// Download a snapshot's archive (.snapshot.tar.gz), checked against its recorded SHA-256.
    Download(DownloadArgs),
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
    /// Mint nothing: print the entry for the existing token (from --token-file, DFE_TOKEN or
    /// standard input) instead.
    #[arg(long)]
    pub digest: bool,
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
        // Filters are for the list, not for one snapshot.
        assert!(Cli::try_parse_from(["dfe", "snapshots", "snap-1", "--instance-id", "acme-1"]).is_err());
        assert!(Cli::try_parse_from(["dfe", "snapshots", "--owner-id", "7", "--limit", "1001"]).is_err());
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
