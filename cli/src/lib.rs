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
//! - [`inspect`]: `dfe jobs`, `dfe instances` and `dfe snapshots` (following cursors), and
//!   `dfe cancel`.
//! - [`fleet`]: `dfe hosts`: the hosts and database servers; cordoning.
//! - [`lifecycle`]: `dfe expire` (the schedule's dry run, an expiry set) and `dfe owner`.
//! - [`reconcile`]: `dfe reconcile`: the workers' reconciliation, asked for through the API.
//! - [`download`]: `dfe snapshots download`: an archive streamed to disk and verified.
//! - [`remove`]: `dfe snapshots delete` and `dfe snapshots prune [--dry-run]`.
//! - [`completions`]: `dfe completions`: shell completion scripts.
//! - [`token`]: `dfe token`: minting bearer tokens and their `[[api.clients]]` entries.
//! - [`output`]: tables, detail views, and printing that survives a closed pipe.
//! - [`error`]: the CLI's own errors and exit statuses (0 ok, 1 failure, 2 rejected input,
//!   3 differences found by `dfe reconcile`).
//! - `testing` (tests only): a stand-in HTTP server on a free loopback port.

pub mod api;
pub mod args;
pub mod broker;
pub mod completions;
pub mod download;
pub mod error;
pub mod events;
pub mod fleet;
pub mod follow;
pub mod inspect;
pub mod lifecycle;
pub mod output;
pub mod reconcile;
pub mod remove;
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
        Command::Suspend(a) => (request::suspend(a), &a.submit),
        Command::Resume(a) => (request::resume(a), &a.submit),
        Command::Move(a) => (request::move_instance(a), &a.submit),
        Command::Token(a) => {
            token::run(a, global.token_file.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        // Needs no configuration: it must work before any is written.
        Command::Completions(a) => {
            completions::run(a)?;
            return Ok(ExitCode::SUCCESS);
        }
        other => {
            let settings = Settings::resolve(global)?;
            match other {
                Command::Reconcile(a) => return reconcile::run(&settings, a).await,
                Command::Jobs(a) => inspect::jobs(&settings, a).await?,
                Command::Cancel(a) => inspect::cancel(&settings, a).await?,
                Command::Instances(a) => inspect::instances(&settings, a).await?,
                Command::Snapshots(a) => match &a.action {
                    Some(SnapshotsCommand::Download(d)) => download::run(&settings, d).await?,
                    Some(SnapshotsCommand::Delete(d)) => remove::delete(&settings, d).await?,
                    Some(SnapshotsCommand::Prune(p)) => return remove::prune(&settings, p).await,
                    None => inspect::snapshots(&settings, a).await?,
                },
                Command::Events(a) => events::run(&settings, a).await?,
                Command::Hosts(a) => fleet::hosts(&settings, a).await?,
                Command::Expire(a) => lifecycle::expire(&settings, a).await?,
                Command::Owner(a) => lifecycle::owner(&settings, a).await?,
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
