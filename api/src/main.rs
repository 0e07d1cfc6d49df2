//! dfe-api: parses arguments, loads the configuration, binds and serves.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The REST API of the DFE provisioner.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); DFE__SECTION__KEY variables override it.
    #[arg(long, env = "DFE_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = dfe_shared::config::Config::load(Some(&args.config))?;
    // Flushes the spans not yet exported when main returns.
    let _telemetry = dfe_shared::telemetry::init_services("dfe-api", &config.log, &config.telemetry);
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| format!("binding api.listen = {}", config.api.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "dfe-api listening");
    // A plain line on stdout that scripts and tests can wait for.
    println!("dfe-api listening on http://{addr}");
    dfe_api::run(config, listener, dfe_api::shutdown_token()).await
}
