//! Command-line types (clap). Defaults live in `config`, so that a flag left out
//! falls back to the config file and then to the built-in default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Switchboard: balance long-lived TCP connections across a fleet of servers.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry HTTP API (and the forward listeners of the configuration).
    Serve(ServeArgs),
}

/// Flags of `switchboard serve`. Each is also a key of the TOML config file; a flag
/// wins over the file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file; without it, built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP API listen address [default: 127.0.0.1:8080]. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Store: sqlite://<file> (created if missing), sqlite::memory: or postgres://...
    /// [default: sqlite://switchboard.db]
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Forward listener LISTEN=SERVICE, repeatable [default: 127.0.0.1:6665=default].
    #[arg(long, value_name = "LISTEN=SERVICE")]
    pub forward: Vec<String>,
    /// Start no forward listener.
    #[arg(long, conflicts_with = "forward")]
    pub no_forward: bool,
    /// Allow binding the HTTP API to a non-loopback address without a register token.
    #[arg(long)]
    pub insecure: bool,
    /// On SIGTERM/Ctrl-C, how long relayed connections and in-flight requests may run
    /// before the process exits [default: 30].
    #[arg(long, value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
}
