//! dfe-bench: parses arguments and runs the benchmark.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = dfe_bench::Args::parse();
    dfe_bench::run(args).await
}
