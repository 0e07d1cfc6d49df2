//! The `dfe` binary: parses the command line and runs it; see the `dfe_cli` crate.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = dfe_cli::Cli::parse();
    match dfe_cli::run(cli).await {
        Ok(code) => code,
        Err(err) => dfe_cli::report(&err),
    }
}
