//! dfe-worker: parses arguments, loads the configuration and runs the worker.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Consumes provisioning jobs from RabbitMQ and carries them out.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); DFE__SECTION__KEY variables override it.
    #[arg(long, env = "DFE_CONFIG")]
    config: PathBuf,
    /// Unique name of this worker (default: dfe-worker-<host>-<pid>).
    #[arg(long, env = "DFE_WORKER_ID")]
    worker_id: Option<String>,
    /// Seconds running jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// Reconcile once instead of consuming: print what differs between the registry and the
    /// Docker hosts and database servers (JSON) and exit (0: all agree, 3: differences).
    #[arg(long)]
    reconcile: bool,
    /// With --reconcile: remove orphans and fail stuck jobs.
    #[arg(long, requires = "reconcile")]
    fix: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = dfe_shared::config::Config::load(Some(&args.config))?;
    // Flushes the spans not yet exported when main returns.
    let _telemetry = dfe_shared::telemetry::init_services("dfe-worker", &config.log, &config.telemetry);
    if args.reconcile {
        let report = dfe_worker::reconcile_once(config, args.fix).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        std::process::exit(if report.is_clean() { 0 } else { 3 });
    }
    let worker_id = args.worker_id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("dfe-worker-{}-{}", host.trim(), std::process::id())
    });
    let options = dfe_worker::Options { worker_id, grace: Duration::from_secs(args.grace_secs) };
    dfe_worker::run(config, options, dfe_worker::shutdown_token()).await
}
