//! Configuration: the TOML file, the environment (tokens) and the flags, merged and
//! validated into one [`Config`]. A flag wins over the file; the environment wins for
//! tokens. An unknown key or a bad value stops the start with a message naming it.
//! This file owns [`Config`], the order of the merge and the top-level keys (`http`,
//! `db`, `insecure`, `drain_timeout_secs`, `http_*`); each section has its own file
//! (`file.rs` the TOML types, `forward.rs` with `edge.rs` for its TLS and SNI keys, `statics.rs`, `tokens.rs`, `limits.rs`,
//! `rebalance.rs`, `dns.rs`, `tls.rs`, `dashboard.rs`; `error.rs` the error); `listeners.rs` checks every
//! listener's address against the others'.
//!
//! Must not open sockets or the store.

mod dashboard;
mod dns;
mod edge;
mod error;
mod file;
mod forward;
mod limits;
mod listeners;
mod rebalance;
mod statics;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use self::dashboard::{DEFAULT_HISTORY_MINUTES, DEFAULT_HISTORY_SAMPLE_SECS, DashboardConfig};
pub use self::dns::{DEFAULT_DNS_ANSWERS, DEFAULT_DNS_DOMAIN, DEFAULT_DNS_TTL_SECS, DnsConfig};
pub use self::edge::{DEFAULT_HANDSHAKE_TIMEOUT_MS, EdgeConfig, ForwardTls, SniMatch, SniRoutes};
pub use self::error::ConfigError;
use self::error::invalid;
use self::file::FileConfig;
pub use self::forward::{
    DEFAULT_FORWARD, DEFAULT_TCP_KEEPALIVE_SECS, DEFAULT_UDP_IDLE_TIMEOUT_SECS, ForwardConfig,
    ForwardHash, ForwardProtocol, ProxyProtocol,
};
pub use self::limits::LimitsConfig;
pub use self::statics::StaticConfig;
pub use self::tls::{ClientAuth, TlsConfig};
pub use self::tokens::TokenConfig;
use crate::cli::ServeArgs;
use crate::registry::RebalancePolicy;

/// Default HTTP API address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default store.
pub const DEFAULT_DB: &str = "sqlite://switchboard.db";
/// Default shutdown drain.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated configuration of `switchboard serve`. `Debug` hides secrets: the
/// store URL's password and the tokens.
#[derive(Clone)]
pub struct Config {
    /// HTTP API address.
    pub http: SocketAddr,
    /// Store URL.
    pub db: String,
    /// Non-loopback bind without register token allowed.
    pub insecure: bool,
    /// Shutdown drain deadline.
    pub drain_timeout: Duration,
    /// Request headers must arrive within this (`http_header_timeout_secs`).
    pub http_header_timeout: Duration,
    /// Idle keep-alive HTTP connections close after this (`http_idle_timeout_secs`).
    pub http_idle_timeout: Duration,
    /// Open HTTP connections at most (`http_max_connections`).
    pub http_max_connections: usize,
    /// Answer the hot routes on the hand-written HTTP/1.1 path (`api/fast/`). Not a
    /// config key: always on, but for tests that compare it with hyper's in-process.
    pub http_fast_path: bool,
    /// Tokens.
    pub tokens: TokenConfig,
    /// Forward listeners.
    pub forwards: Vec<ForwardConfig>,
    /// Static instances.
    pub statics: Vec<StaticConfig>,
    /// Rebalancing hint settings.
    pub rebalance: RebalancePolicy,
    /// Per-source-address rate limits.
    pub limits: LimitsConfig,
    /// The DNS server, when configured.
    pub dns: Option<DnsConfig>,
    /// HTTPS on the API (`[tls]`), when configured.
    pub tls: Option<TlsConfig>,
    /// The dashboard's history (`[dashboard]`).
    pub dashboard: DashboardConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("db", &redact_url(&self.db))
            .field("insecure", &self.insecure)
            .field("drain_timeout", &self.drain_timeout)
            .field("http_header_timeout", &self.http_header_timeout)
            .field("http_idle_timeout", &self.http_idle_timeout)
            .field("http_max_connections", &self.http_max_connections)
            .field("http_fast_path", &self.http_fast_path)
            .field("tokens", &self.tokens)
            .field("forwards", &self.forwards)
            .field("statics", &self.statics)
            .field("rebalance", &self.rebalance)
            .field("limits", &self.limits)
            .field("dns", &self.dns)
            .field("tls", &self.tls)
            .field("dashboard", &self.dashboard)
            .finish()
    }
}

/// A URL without its password (`postgres://user:***@host/db`), for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// `[tls] register_requires_client_cert`: a backend's own writes need a verified
    /// client certificate.
    pub fn register_needs_client_cert(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.register_requires_client_cert)
    }

    /// Loads the file named by `--config` (if any), the environment and the flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => file::read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(file, args, tokens::env_token)
    }

    /// Parses config file text (for tests and tools).
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn from_toml(text: &str, args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = file::parse_text(Path::new("<inline>"), text)?;
        Config::merge(file, args, |_| None)
    }

    /// Section by section, in this order (the first bad key is the one named); a flag
    /// over the file, the environment over the file for tokens.
    fn merge(
        file: FileConfig,
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let http = http_address(args.http.clone().or(file.http))?;
        let db = store_url(args.db.clone().or(file.db))?;
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        let drain_timeout = args
            .drain_timeout_secs
            .or(file.drain_timeout_secs)
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs);
        let http_header_timeout = Duration::from_secs(within(
            "http_header_timeout_secs",
            file.http_header_timeout_secs,
            10,
            3_600,
        )?);
        let http_idle_timeout = Duration::from_secs(within(
            "http_idle_timeout_secs",
            file.http_idle_timeout_secs,
            60,
            86_400,
        )?);
        let http_max_connections = within(
            "http_max_connections",
            file.http_max_connections,
            10_000,
            1_000_000,
        )? as usize;
        let tokens = tokens::merge(file.tokens, &env)?;
        let (forward_keys, forwards): (Vec<String>, Vec<ForwardConfig>) =
            forward::merge(file.forward, args)?.into_iter().unzip();
        let config = Config {
            http,
            db,
            insecure,
            drain_timeout,
            http_header_timeout,
            http_idle_timeout,
            http_max_connections,
            http_fast_path: true,
            tokens,
            forwards,
            statics: statics::merge(file.statics)?,
            limits: limits::merge(file.limits)?,
            rebalance: rebalance::merge(file.rebalance)?,
            dns: dns::validate_dns(file.dns, args.dns.as_deref())?,
            tls: tls::merge(file.tls)?,
            dashboard: dashboard::merge(file.dashboard)?,
        };
        listeners::check(&listeners::of(&config, &forward_keys))?;
        // A verified client certificate to register stands for the register token.
        let register_guarded =
            !config.tokens.register.is_empty() || config.register_needs_client_cert();
        if !config.http.ip().is_loopback() && !register_guarded && !config.insecure {
            return Err(ConfigError::InsecureBind(config.http));
        }
        Ok(config)
    }
}

/// `http` / `--http`, or [`DEFAULT_HTTP`].
fn http_address(text: Option<String>) -> Result<SocketAddr, ConfigError> {
    let http_text = text.unwrap_or_else(|| DEFAULT_HTTP.into());
    http_text.parse().map_err(|_| {
        invalid(
            "http",
            format!("{http_text:?} is not an IP:port address (e.g. 127.0.0.1:8080 or [::1]:8080)"),
        )
    })
}

/// `db` / `--db`, or [`DEFAULT_DB`]: SQLite or PostgreSQL.
fn store_url(text: Option<String>) -> Result<String, ConfigError> {
    let db = text.unwrap_or_else(|| DEFAULT_DB.into());
    if !(db.starts_with("sqlite:")
        || db.starts_with("postgres://")
        || db.starts_with("postgresql://"))
    {
        return Err(invalid(
            "db",
            format!("{db:?}: expected sqlite://<file>, sqlite::memory: or postgres://..."),
        ));
    }
    Ok(db)
}

/// A top-level number key: `default` when unset, else within `1..=max`.
fn within(key: &str, value: Option<u64>, default: u64, max: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(invalid(key, format!("must be within 1..={max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let args = ServeArgs {
            db: Some("postgres://app:hunter2@db.local/registry".into()),
            ..ServeArgs::default()
        };
        let config = Config::from_toml(
            "[tokens]\nadmin = \"adm-secret\"\nregister = [\"reg-secret\"]\nread = \"read-secret\"\n",
            &args,
        )
        .unwrap();
        let shown = format!("{config:?}");
        for secret in ["hunter2", "adm-secret", "reg-secret", "read-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://app:***@db.local/registry"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let c = Config::from_toml("", &ServeArgs::default()).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!(c.db, "sqlite://switchboard.db");
        assert_eq!(c.forwards.len(), 1);
        assert_eq!(c.forwards[0].listen.to_string(), "127.0.0.1:6665");
        assert_eq!(c.forwards[0].connect_timeout, Duration::from_secs(1));
        assert_eq!(c.rebalance, RebalancePolicy::default());
    }

    #[test]
    fn flag_wins_over_file() {
        let args = ServeArgs {
            http: Some("127.0.0.1:0".into()),
            ..ServeArgs::default()
        };
        let c = Config::from_toml("http = \"127.0.0.1:9999\"", &args).unwrap();
        assert_eq!(c.http.port(), 0);
    }

    #[test]
    fn non_loopback_needs_register_token_or_insecure() {
        let args = ServeArgs {
            http: Some("0.0.0.0:8080".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::from_toml("", &args),
            Err(ConfigError::InsecureBind(_))
        ));
        assert!(Config::from_toml("[tokens]\nregister = \"s3cret\"", &args).is_ok());
        assert!(Config::from_toml("insecure = true", &args).is_ok());
    }
}
