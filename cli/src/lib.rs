//! `dfe`: the command line of the DFE provisioner.
//!
//! Module map:
//! - [`args`]: the command-line surface (clap derive).
//! - [`settings`]: API URL, RabbitMQ URL and token from options, environment, config, defaults.
//! - [`request`]: arguments → typed `dfe-shared` jobs, validated before anything is sent.
//! - [`submit`]: submitting a job through the API or straight onto `dfe.jobs`.
//! - [`follow`]: `--wait`: events of the job plus polling of its record, to its end.
//! - [`api`]: the REST client, and problem+json answers rendered for people.
//! - [`broker`]: RabbitMQ: publishing jobs, subscribing to `dfe.events`.
//! - [`events`]: reading and showing events; `dfe events`.
//! - [`inspect`]: `dfe jobs`, `dfe instances` and `dfe snapshots`.
//! - [`download`]: `dfe snapshots download`: an archive streamed to disk and verified.
//! - [`completions`]: `dfe completions`: shell completion scripts.
//! - [`token`]: `dfe token`: minting bearer tokens and their `[[api.clients]]` entries.
//! - [`output`]: tables, detail views, and printing that survives a closed pipe.
//! - [`error`]: the CLI's own errors and exit statuses (0 ok, 1 failure, 2 rejected input).
//! - `testing` (tests only): a stand-in HTTP server on a free loopback port.

pub mod api;
pub mod args;
pub mod broker;
pub mod completions;
pub mod download;
pub mod error;
pub mod events;
pub mod follow;
pub mod inspect;
pub mod output;
pub mod request;
pub mod settings;
pub mod submit;
pub mod token;

#[cfg(test)]
mod testing;

use std::process::ExitCode;

pub use args::Cli;
use args::{Command, SnapshotsCommand};
pub use error::report;
use error::CliError;
use settings::Settings;

/// Runs one `dfe` invocation; the exit code tells how a followed job ended.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    // Jobs are built (and so validated) before any configuration is read or service called.
    let (job, submit) = match &cli.command {
        Command::Provision(a) => (request::provision(a), &a.submit),
        Command::Deprovision(a) => (request::deprovision(a), &a.submit),
        Command::Import(a) => (request::import(a), &a.submit),
        Command::Export(a) => (request::export(a), &a.submit),
        Command::Token(a) => {
            token::run(a, global.token_file.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Reconcile(a) => return reconcile(global.config.as_deref(), a).await,
        // Needs no configuration: it must work before any is written.
        Command::Completions(a) => {
            completions::run(a)?;
            return Ok(ExitCode::SUCCESS);
        }
        other => {
            let settings = Settings::resolve(global)?;
            match other {
                Command::Jobs(a) => inspect::jobs(&settings, a).await?,
                Command::Instances(a) => inspect::instances(&settings, a).await?,
                Command::Snapshots(a) => match &a.action {
                    Some(SnapshotsCommand::Download(d)) => download::run(&settings, d).await?,
                    None => inspect::snapshots(&settings, a).await?,
                },
                Command::Events(a) => events::run(&settings, a).await?,
                // The operations, `token` and `completions` are handled above.
                _ => {}
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let job = job.map_err(CliError::from)?;
    let settings = Settings::resolve(global)?;
    submit::run(&settings, global.via, job, submit).await
}

/// `dfe reconcile`: runs the workers' reconciler once, here.
async fn reconcile(config: Option<&std::path::Path>, a: &args::ReconcileArgs) -> anyhow::Result<ExitCode> {
    let config = dfe_shared::config::Config::load(config).map_err(|e| {
        anyhow::anyhow!("{e}: dfe reconcile needs the workers' configuration (--config FILE or DFE_CONFIG)")
    })?;
    let report = dfe_worker::reconcile_once(config, a.fix).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for o in &report.orphans {
            let done = if o.removed {
                "removed"
            } else if a.fix {
                "NOT removed"
            } else {
                "orphan"
            };
            println!("{done:<12} {:<9} {:<40} instance={} on {}", o.kind, o.name, o.instance_id, o.location);
        }
        for m in &report.missing {
            println!("{:<12} {:<9} of instance {}", "missing", m.kind, m.instance_id);
        }
        for s in &report.stuck {
            let done = if s.failed { "failed" } else { "stuck" };
            println!("{done:<12} job {} ({} {}, instance {})", s.job_id, s.kind, s.state, s.instance_id);
        }
        for u in &report.unreachable {
            println!("{:<12} {u}", "unreachable");
        }
        if report.is_clean() {
            println!("registry, Docker hosts and database servers agree");
        }
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
