//! Configuration: the TOML file, the environment (tokens) and the flags, merged and
//! validated into one [`Config`]. A flag wins over the file; the environment wins for
//! tokens. An unknown key or a bad value stops the start with a message naming it.
//!
//! Must not open sockets or the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::ServeArgs;
use crate::registry::RebalancePolicy;
use crate::registry::validate;

/// Default TCP keepalive idle time on relayed sockets (SPEC section 4).
pub const DEFAULT_TCP_KEEPALIVE_SECS: u64 = 60;
/// Default `idle_timeout_secs` of a UDP listener (SPEC 4).
pub const DEFAULT_UDP_IDLE_TIMEOUT_SECS: u64 = 20;
/// Largest `tcp_keepalive_secs`: the kernel's TCP_KEEPIDLE limit is 32767.
const MAX_TCP_KEEPALIVE_SECS: u64 = 32_767;

/// Largest `[rebalance] reconnect_jitter_ms`: one hour.
const MAX_RECONNECT_JITTER_MS: u64 = 3_600_000;

/// Default HTTP API address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default store.
pub const DEFAULT_DB: &str = "sqlite://switchboard.db";
/// Default forward listener.
pub const DEFAULT_FORWARD: &str = "127.0.0.1:6665=default";
/// Default shutdown drain.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The key, e.g. `forward[0].proxy_protocol`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Non-loopback HTTP bind without a register token.
    #[error(
        "refusing to serve the HTTP API on {0} (not loopback) without a register token: \
         set [tokens] register in the config file or SWITCHBOARD_REGISTER_TOKEN, \
         or pass --insecure to accept registrations from anyone who can reach it"
    )]
    InsecureBind(SocketAddr),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// `[tokens]`: a single register token or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokens {
    admin: Option<String>,
    register: Option<OneOrMany>,
    read: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[forward]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForward {
    listen: String,
    #[serde(default = "default_service")]
    service: String,
    proxy_protocol: Option<String>,
    max_connections: Option<u64>,
    connect_timeout_ms: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_fails: Option<u32>,
    fail_timeout_secs: Option<u64>,
    hash: Option<String>,
    tcp_keepalive_secs: Option<u64>,
    protocol: Option<String>,
    udp_responses: Option<u64>,
}

fn default_service() -> String {
    "default".to_owned()
}

/// `[[static]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStatic {
    #[serde(default = "default_service")]
    service: String,
    address: String,
    weight: Option<i64>,
    max_connections: Option<i64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    register_per_sec: Option<u32>,
    read_per_sec: Option<u32>,
}

/// `[limits]`: requests per second per source address (unset = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Registrations.
    pub register_per_sec: Option<u32>,
    /// `GET /servers`.
    pub read_per_sec: Option<u32>,
}

/// `[rebalance]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRebalance {
    enabled: Option<bool>,
    tolerance: Option<f64>,
    shed_max_ratio: Option<f64>,
    reconnect_jitter_ms: Option<u64>,
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<String>,
    db: Option<String>,
    insecure: Option<bool>,
    drain_timeout_secs: Option<u64>,
    http_header_timeout_secs: Option<u64>,
    http_idle_timeout_secs: Option<u64>,
    http_max_connections: Option<u64>,
    tokens: Option<FileTokens>,
    forward: Option<Vec<FileForward>>,
    #[serde(rename = "static")]
    statics: Option<Vec<FileStatic>>,
    rebalance: Option<FileRebalance>,
    limits: Option<FileLimits>,
    dns: Option<FileDns>,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDns {
    listen: Option<String>,
    domain: Option<String>,
    ttl_secs: Option<u64>,
    answers: Option<u64>,
    name_servers: Option<Vec<String>>,
    queries_per_sec: Option<u32>,
}

/// Default zone of the DNS server: `.internal` is reserved for private use (ICANN,
/// 2024), so it never shadows a public name.
pub const DEFAULT_DNS_DOMAIN: &str = "switchboard.internal.";
/// Default TTL of DNS answers (SPEC 8): a dead backend leaves caches within it.
pub const DEFAULT_DNS_TTL_SECS: u64 = 5;
/// Default records per DNS answer (SPEC 8).
pub const DEFAULT_DNS_ANSWERS: u64 = 3;

/// `[dns]`: the load-aware DNS server (SPEC 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP address.
    pub listen: SocketAddr,
    /// The zone, fully qualified, lower case.
    pub domain: String,
    /// TTL of every record (and of negative answers).
    pub ttl_secs: u32,
    /// Records per answer at most.
    pub answers: usize,
    /// The zone's name servers (`ns1`, `ns2`, ... in the zone): every node of a
    /// cluster, so that all answer the same. Default: `listen`'s IP, unless it is a
    /// wildcard.
    pub name_servers: Vec<std::net::IpAddr>,
    /// UDP queries per second per source address (unset = no limit); beyond it the
    /// answer is an empty one with TC set, so a real client asks again over TCP.
    pub queries_per_sec: Option<u32>,
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// Transport of a forward listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardProtocol {
    /// Stream connections, relayed both ways.
    #[default]
    Tcp,
    /// Datagrams, in sessions per client address.
    Udp,
}

/// Affinity hashing of a forward listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardHash {
    /// Least load, no affinity.
    None,
    /// The device's IP address is the affinity key.
    RemoteAddr,
}

/// One validated forward listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Service whose instances it forwards to.
    pub service: String,
    /// PROXY protocol header to send, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Connections beyond this are closed at once.
    pub max_connections: Option<u64>,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Close a relayed connection idle this long.
    pub idle_timeout: Option<Duration>,
    /// Failures within `fail_timeout` that take a backend out.
    pub max_fails: u32,
    /// Window and penalty of `max_fails`.
    pub fail_timeout: Duration,
    /// Affinity hashing.
    pub hash: ForwardHash,
    /// TCP keepalive idle time on both sockets of a relayed connection; `None` off.
    pub tcp_keepalive: Option<Duration>,
    /// TCP or UDP.
    pub protocol: ForwardProtocol,
    /// UDP: a session ends once this many datagrams came back (nginx's
    /// `proxy_responses`); `None` = no limit.
    pub udp_responses: Option<u64>,
}

/// One validated static instance.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    /// Service.
    pub service: String,
    /// Canonical `host:port`, or `unix:/absolute/path` (forwarder only).
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Cap.
    pub max_connections: Option<u64>,
}

/// The tokens of SPEC section 6, as configured (plain data; `api::auth` builds its
/// checker from them). `Debug` says which are set, never what they are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenConfig {
    /// Admin endpoints, and drain/deregister without a lease. Also valid everywhere.
    pub admin: Option<String>,
    /// Registration; any of these.
    pub register: Vec<String>,
    /// `GET /servers`.
    pub read: Option<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<String>| if t.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("TokenConfig")
            .field("admin", &set(&self.admin))
            .field("register", &format_args!("<{} set>", self.register.len()))
            .field("read", &set(&self.read))
            .finish()
    }
}

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

/// Reads a token from the environment; empty means unset.
fn env_token(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// Loads the file named by `--config` (if any), the environment and the flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(file, args, env_token)
    }

    /// Parses config file text (for tests and tools).
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn from_toml(text: &str, args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = parse_text(Path::new("<inline>"), text)?;
        Config::merge(file, args, |_| None)
    }

    fn merge(
        file: FileConfig,
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let http_text = args
            .http
            .clone()
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.into());
        let http: SocketAddr = http_text.parse().map_err(|_| {
            invalid(
                "http",
                format!(
                    "{http_text:?} is not an IP:port address (e.g. 127.0.0.1:8080 or [::1]:8080)"
                ),
            )
        })?;
        let db = args
            .db
            .clone()
            .or(file.db)
            .unwrap_or_else(|| DEFAULT_DB.into());
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "db",
                format!("{db:?}: expected sqlite://<file>, sqlite::memory: or postgres://..."),
            ));
        }
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        let drain_timeout = args
            .drain_timeout_secs
            .or(file.drain_timeout_secs)
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs);
        let within = |key: &str, value: Option<u64>, default: u64, max: u64| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(_) => Err(invalid(key, format!("must be within 1..={max}"))),
        };
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

        let file_tokens = file.tokens.unwrap_or_default();
        let register = match env("SWITCHBOARD_REGISTER_TOKEN") {
            Some(t) => vec![t],
            None => match file_tokens.register {
                None => Vec::new(),
                Some(OneOrMany::One(t)) => vec![t],
                Some(OneOrMany::Many(ts)) => ts,
            },
        };
        let tokens = TokenConfig {
            admin: env("SWITCHBOARD_ADMIN_TOKEN").or(file_tokens.admin),
            register,
            read: env("SWITCHBOARD_READ_TOKEN").or(file_tokens.read),
        };
        for (key, token) in [
            ("tokens.admin", &tokens.admin),
            ("tokens.read", &tokens.read),
        ] {
            if token.as_ref().is_some_and(|t| t.trim().is_empty()) {
                return Err(invalid(key, "token must not be empty"));
            }
        }
        if tokens.register.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid("tokens.register", "token must not be empty"));
        }

        let forwards = if args.no_forward {
            Vec::new()
        } else if !args.forward.is_empty() {
            args.forward
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    parse_forward_flag(spec)
                        .and_then(|f| validate_forward(&format!("--forward[{i}]"), f))
                })
                .collect::<Result<_, _>>()?
        } else if let Some(list) = file.forward {
            list.into_iter()
                .enumerate()
                .map(|(i, f)| validate_forward(&format!("forward[{i}]"), f))
                .collect::<Result<_, _>>()?
        } else {
            vec![validate_forward(
                "forward",
                parse_forward_flag(DEFAULT_FORWARD)?,
            )?]
        };

        let statics = file
            .statics
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, s)| validate_static(i, s))
            .collect::<Result<_, _>>()?;

        let l = file.limits.unwrap_or_default();
        for (key, value) in [
            ("limits.register_per_sec", l.register_per_sec),
            ("limits.read_per_sec", l.read_per_sec),
        ] {
            if value == Some(0) {
                return Err(invalid(
                    key,
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        let limits = LimitsConfig {
            register_per_sec: l.register_per_sec,
            read_per_sec: l.read_per_sec,
        };

        let r = file.rebalance.unwrap_or_default();
        let defaults = RebalancePolicy::default();
        let rebalance = RebalancePolicy {
            enabled: r.enabled.unwrap_or(defaults.enabled),
            tolerance: r.tolerance.unwrap_or(defaults.tolerance),
            shed_max_ratio: r.shed_max_ratio.unwrap_or(defaults.shed_max_ratio),
            reconnect_jitter_ms: r
                .reconnect_jitter_ms
                .unwrap_or(defaults.reconnect_jitter_ms),
        };
        if rebalance.reconnect_jitter_ms > MAX_RECONNECT_JITTER_MS {
            return Err(invalid(
                "rebalance.reconnect_jitter_ms",
                "must be within 0..=3600000 (one hour)",
            ));
        }
        if !(0.0..=10.0).contains(&rebalance.tolerance) {
            return Err(invalid(
                "rebalance.tolerance",
                "must be within 0.0..=10.0 (0.10 = 10 %)",
            ));
        }
        if !(0.0..=1.0).contains(&rebalance.shed_max_ratio) {
            return Err(invalid(
                "rebalance.shed_max_ratio",
                "must be within 0.0..=1.0 (0.01 = 1 %)",
            ));
        }

        let dns = validate_dns(file.dns, args.dns.as_deref())?;
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
            statics,
            rebalance,
            limits,
            dns,
        };
        if !config.http.ip().is_loopback() && config.tokens.register.is_empty() && !config.insecure
        {
            return Err(ConfigError::InsecureBind(config.http));
        }
        Ok(config)
    }
}

/// `[dns]` and `--dns` (which sets `listen`, and alone turns the server on).
fn validate_dns(
    file: Option<FileDns>,
    flag: Option<&str>,
) -> Result<Option<DnsConfig>, ConfigError> {
    if file.is_none() && flag.is_none() {
        return Ok(None);
    }
    let f = file.unwrap_or_default();
    let listen_text = flag.map(str::to_owned).or(f.listen).ok_or_else(|| {
        invalid(
            "dns.listen",
            "required (e.g. \"127.0.0.1:5353\"), or --dns <addr>",
        )
    })?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "dns.listen",
            format!("{listen_text:?} is not an IP:port address (e.g. 127.0.0.1:5353)"),
        )
    })?;
    let mut domain = f
        .domain
        .unwrap_or_else(|| DEFAULT_DNS_DOMAIN.to_owned())
        .to_ascii_lowercase();
    if !domain.ends_with('.') {
        domain.push('.');
    }
    let labels_ok = domain.len() <= 200
        && domain.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(invalid(
            "dns.domain",
            format!(
                "{domain:?}: expected a domain name such as \"sb.example.com\" (letters, digits, '-', at most 200 characters)"
            ),
        ));
    }
    let ttl_secs = match f.ttl_secs.unwrap_or(DEFAULT_DNS_TTL_SECS) {
        v @ 0..=86_400 => v as u32,
        _ => return Err(invalid("dns.ttl_secs", "must be within 0..=86400")),
    };
    let answers = match f.answers.unwrap_or(DEFAULT_DNS_ANSWERS) {
        v @ 1..=20 => v as usize,
        _ => {
            return Err(invalid(
                "dns.answers",
                "must be within 1..=20 (an answer must fit in 512 bytes)",
            ));
        }
    };
    let name_servers = match f.name_servers {
        Some(list) => list
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| invalid("dns.name_servers", format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None if listen.ip().is_unspecified() => Vec::new(),
        None => vec![listen.ip()],
    };
    if name_servers.len() > 13 {
        return Err(invalid(
            "dns.name_servers",
            "at most 13 (as the root zone has)",
        ));
    }
    if f.queries_per_sec == Some(0) {
        return Err(invalid(
            "dns.queries_per_sec",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(Some(DnsConfig {
        listen,
        domain,
        ttl_secs,
        answers,
        name_servers,
        queries_per_sec: f.queries_per_sec,
    }))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_text(path, &text)
}

fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse_forward_flag(spec: &str) -> Result<FileForward, ConfigError> {
    let (listen, service) = spec.split_once('=').ok_or_else(|| {
        invalid(
            "--forward",
            format!("{spec:?}: expected LISTEN=SERVICE, e.g. 127.0.0.1:6665=default"),
        )
    })?;
    Ok(FileForward {
        listen: listen.to_owned(),
        service: service.to_owned(),
        ..FileForward::default()
    })
}

fn validate_forward(key: &str, f: FileForward) -> Result<ForwardConfig, ConfigError> {
    let listen = f.listen.parse().map_err(|_| {
        invalid(
            format!("{key}.listen"),
            format!("{:?} is not an IP:port address", f.listen),
        )
    })?;
    validate::service_name(&f.service).map_err(|e| invalid(format!("{key}.service"), e.message))?;
    let proxy_protocol = match f.proxy_protocol.as_deref() {
        None => None,
        Some("v1") => Some(ProxyProtocol::V1),
        Some("v2") => Some(ProxyProtocol::V2),
        Some(other) => {
            return Err(invalid(
                format!("{key}.proxy_protocol"),
                format!("{other:?}: expected \"v1\" or \"v2\""),
            ));
        }
    };
    let hash = match f.hash.as_deref() {
        None => ForwardHash::None,
        Some("remote_addr") => ForwardHash::RemoteAddr,
        Some(other) => {
            return Err(invalid(
                format!("{key}.hash"),
                format!("{other:?}: the only hash is \"remote_addr\""),
            ));
        }
    };
    let positive = |name: &str, v: Option<u64>| -> Result<Option<u64>, ConfigError> {
        match v {
            Some(0) => Err(invalid(format!("{key}.{name}"), "must be at least 1")),
            other => Ok(other),
        }
    };
    let max_fails = f.max_fails.unwrap_or(3);
    if max_fails == 0 {
        return Err(invalid(format!("{key}.max_fails"), "must be at least 1"));
    }
    let protocol = match f.protocol.as_deref() {
        None | Some("tcp") => ForwardProtocol::Tcp,
        Some("udp") => ForwardProtocol::Udp,
        Some(other) => {
            return Err(invalid(
                format!("{key}.protocol"),
                format!("{other:?}: expected \"tcp\" or \"udp\""),
            ));
        }
    };
    if protocol == ForwardProtocol::Udp {
        // Keys that only mean something for a stream: refused rather than ignored.
        let stream_only = [
            ("proxy_protocol", f.proxy_protocol.is_some()),
            ("tcp_keepalive_secs", f.tcp_keepalive_secs.is_some()),
            ("connect_timeout_ms", f.connect_timeout_ms.is_some()),
        ];
        if let Some((name, _)) = stream_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("{key}.{name}"),
                "not for protocol = \"udp\" (datagrams have no connection)",
            ));
        }
    } else if f.udp_responses.is_some() {
        return Err(invalid(
            format!("{key}.udp_responses"),
            "only for protocol = \"udp\"",
        ));
    }
    let idle_timeout = positive("idle_timeout_secs", f.idle_timeout_secs)?;
    // nginx's proxy_timeout for UDP is 10 min; SPEC 4 says 20 s, so sessions of
    // clients that never come back do not pile up.
    let idle_timeout = match protocol {
        ForwardProtocol::Udp => Some(idle_timeout.unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT_SECS)),
        ForwardProtocol::Tcp => idle_timeout,
    };
    Ok(ForwardConfig {
        listen,
        service: f.service,
        proxy_protocol,
        max_connections: positive("max_connections", f.max_connections)?,
        connect_timeout: Duration::from_millis(
            positive("connect_timeout_ms", f.connect_timeout_ms)?.unwrap_or(1000),
        ),
        idle_timeout: idle_timeout.map(Duration::from_secs),
        max_fails,
        fail_timeout: Duration::from_secs(
            positive("fail_timeout_secs", f.fail_timeout_secs)?.unwrap_or(10),
        ),
        hash,
        // 0 turns it off; 7200 s is the kernel's own default idle time.
        tcp_keepalive: match f.tcp_keepalive_secs.unwrap_or(DEFAULT_TCP_KEEPALIVE_SECS) {
            0 => None,
            secs if secs <= MAX_TCP_KEEPALIVE_SECS => Some(Duration::from_secs(secs)),
            _ => {
                return Err(invalid(
                    format!("{key}.tcp_keepalive_secs"),
                    format!("must be within 0..={MAX_TCP_KEEPALIVE_SECS} (0 turns it off)"),
                ));
            }
        },
        protocol,
        udp_responses: f.udp_responses,
    })
}

fn validate_static(i: usize, s: FileStatic) -> Result<StaticConfig, ConfigError> {
    let key = format!("static[{i}]");
    validate::service_name(&s.service).map_err(|e| invalid(format!("{key}.service"), e.message))?;
    Ok(StaticConfig {
        service: s.service,
        address: validate::static_address(&s.address)
            .map_err(|e| invalid(format!("{key}.address"), e.message))?,
        weight: validate::weight(s.weight)
            .map_err(|e| invalid(format!("{key}.weight"), e.message))?,
        max_connections: validate::max_connections(s.max_connections)
            .map_err(|e| invalid(format!("{key}.max_connections"), e.message))?,
    })
}

#[cfg(test)]
mod tests {

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

    use super::*;

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
    fn unknown_key_is_named() {
        let err = Config::from_toml("htp = \"x\"", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
        let err = Config::from_toml(
            "[[forward]]\nlisten = \"127.0.0.1:1\"\nproxy = \"v1\"",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("proxy"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml(
            "[[forward]]\nlisten = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("forward[0].proxy_protocol"),
            "{err}"
        );
        let err =
            Config::from_toml("[[static]]\naddress = \"nope\"", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("static[0].address"), "{err}");
        let err =
            Config::from_toml("[rebalance]\ntolerance = -1.0", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("rebalance.tolerance"), "{err}");
    }

    #[test]
    fn dns_is_off_unless_asked_and_its_bad_values_are_named() {
        let none = Config::from_toml("", &ServeArgs::default()).unwrap();
        assert_eq!(none.dns, None);
        let flag = ServeArgs {
            dns: Some("127.0.0.1:5353".into()),
            ..ServeArgs::default()
        };
        let dns = Config::from_toml("", &flag).unwrap().dns.unwrap();
        assert_eq!(
            (dns.domain.as_str(), dns.ttl_secs, dns.answers),
            (DEFAULT_DNS_DOMAIN, 5, 3)
        );
        assert_eq!(
            dns.name_servers,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let file = Config::from_toml(
            "[dns]\nlisten = \"0.0.0.0:53\"\ndomain = \"SB.Example.com\"",
            &ServeArgs::default(),
        )
        .unwrap()
        .dns
        .unwrap();
        assert_eq!(file.domain, "sb.example.com.");
        assert!(file.name_servers.is_empty(), "a wildcard is no name server");
        for (text, key) in [
            ("[dns]\ndomain = \"x.\"", "dns.listen"),
            ("[dns]\nlisten = \"nope\"", "dns.listen"),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\ndomain = \"a..b\"",
                "dns.domain",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\ndomain = \"a_b.c\"",
                "dns.domain",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nanswers = 0",
                "dns.answers",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nanswers = 21",
                "dns.answers",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nttl_secs = 86401",
                "dns.ttl_secs",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nqueries_per_sec = 0",
                "dns.queries_per_sec",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nname_servers = [\"ns1\"]",
                "dns.name_servers",
            ),
        ] {
            let err = Config::from_toml(text, &ServeArgs::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let unknown = Config::from_toml("[dns]\nport = 53", &ServeArgs::default()).unwrap_err();
        assert!(unknown.to_string().contains("port"), "{unknown}");
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
