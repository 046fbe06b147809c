//! Command-line types (clap). Defaults live in `config`, so that a flag left out
//! falls back to the config file and then to the built-in default; the operator
//! commands' defaults and exit codes live in `operator`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Switchboard: balance long-lived TCP connections across a fleet of servers.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about,
    long_about = None,
    after_help = crate::operator::EXIT_CODES_HELP
)]
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
    /// List every service of a running server: live, draining and expired instance
    /// counts, total connections, self-preservation.
    #[command(after_help = crate::operator::EXIT_CODES_HELP)]
    Services(ServicesArgs),
    /// List every instance of a service, in all states (up, draining, expired), with
    /// its connections, pending hand-outs, load and heartbeat age.
    #[command(after_help = crate::operator::EXIT_CODES_HELP)]
    Instances(InstancesArgs),
    /// Drain an instance: it stays registered but is never handed out again; with
    /// --evacuate-per-sec, it is also asked to close that many connections per second.
    #[command(after_help = crate::operator::EXIT_CODES_HELP)]
    Drain(DrainArgs),
    /// Deregister an instance: it disappears from every answer at once.
    #[command(after_help = crate::operator::EXIT_CODES_HELP)]
    Deregister(DeregisterArgs),
    /// Validate a configuration file without starting anything, like `nginx -t`:
    /// exit 0 when it is valid, 2 with a message naming the key when it is not.
    Check(CheckArgs),
}

/// Flags of `switchboard check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The TOML configuration file to validate.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Flags of `switchboard serve`. Each is also a key of the TOML config file; a flag
/// wins over the file.
#[derive(Debug, Default, Clone, Args)]
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
    /// Serve load-aware DNS (SPEC 8) on this address, UDP and TCP (sets `[dns] listen`).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<String>,
    /// Allow binding the HTTP API to a non-loopback address without a register token.
    #[arg(long)]
    pub insecure: bool,
    /// On SIGTERM/Ctrl-C, how long relayed connections and in-flight requests may run
    /// before the process exits [default: 30].
    #[arg(long, value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
}

/// How the operator commands reach a running server.
#[derive(Clone, Args)]
pub struct ServerArgs {
    /// The server's HTTP API, http://HOST:PORT or https://HOST:PORT (HOST:PORT alone
    /// means http://).
    #[arg(
        long,
        value_name = "URL",
        env = "SWITCHBOARD_SERVER",
        default_value = crate::operator::DEFAULT_SERVER
    )]
    pub server: String,
    /// The admin token, sent as `Authorization: Bearer <TOKEN>`. Prefer the
    /// environment variable: a flag is visible to other users in `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// For an https:// server: trust only this CA (PEM) instead of the system's roots.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// For an https:// server asking for client certificates: this certificate (PEM,
    /// its chain after it), with --client-key.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHBOARD_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHBOARD_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
    /// Print the server's JSON answer (pretty-printed) instead of a table, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl ServerArgs {
    /// The TLS files the flags name.
    pub fn tls_files(&self) -> crate::tls::client::ClientFiles {
        crate::tls::client::ClientFiles {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

impl std::fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ServerArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("json", &self.json)
            .finish()
    }
}

/// Arguments of `switchboard services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// The server to ask.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `switchboard instances`.
#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// The service whose instances to list (e.g. `default`).
    pub service: String,
    /// The server to ask.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `switchboard drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The instance's service.
    pub service: String,
    /// The instance's id (the ID column of `switchboard instances`).
    pub id: String,
    /// Paced evacuation: ask the instance to close R connections per second
    /// (1..=100000) until it has none, so the rest of the fleet absorbs them gradually.
    /// Without it, existing connections are left alone.
    #[arg(long, value_name = "R")]
    pub evacuate_per_sec: Option<u64>,
    /// The server to ask.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `switchboard deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// The instance's service.
    pub service: String,
    /// The instance's id (the ID column of `switchboard instances`).
    pub id: String,
    /// The server to ask.
    #[command(flatten)]
    pub server: ServerArgs,
}
