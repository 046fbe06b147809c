//! The `switchboard` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use switchboard::cli::{Cli, Command};
use switchboard::config::Config;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args).context("configuration")?;
            // One worker per core; TOKIO_WORKER_THREADS overrides it.
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(switchboard::app::run(config))?;
        }
    }
    Ok(())
}
