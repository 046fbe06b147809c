//! The registry handle: one or more registry URLs (cluster nodes), tokens, and the
//! HTTP calls of the API, with failover between nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::tls::TlsSettings;

/// How long one request may take by default (a blocking query adds its wait).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What clients assume before the registry has said otherwise (SPEC default).
pub const DEFAULT_RECONNECT_JITTER_MS: u64 = 5_000;

/// A registry of one or more nodes. Cheap to clone; clones share the remembered node,
/// the cached lists and the HTTP connection pool.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchboard_client::Registry;
/// let registry = Registry::builder(["http://127.0.0.1:8080", "http://127.0.0.1:8081"])
///     .register_token("s3cret")
///     .build()?;
/// assert_eq!(registry.nodes().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    nodes: Vec<Url>,
    /// The node that answered last: tried first next time.
    preferred: AtomicUsize,
    tokens: Tokens,
    timeout: Duration,
    /// The last good list per query, answered while no node is reachable.
    cache: Mutex<HashMap<Query, ServerList>>,
    /// `reconnect_jitter_ms` of the last answer.
    jitter_ms: AtomicU64,
}

#[derive(Default, Clone)]
struct Tokens {
    register: Option<String>,
    read: Option<String>,
    admin: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: only the nodes are shown.
        f.debug_struct("Registry")
            .field("nodes", &self.inner.nodes)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Registry`].
///
/// ```
/// use std::time::Duration;
/// use switchboard_client::Registry;
/// let registry = Registry::builder(["http://127.0.0.1:8080"])
///     .request_timeout(Duration::from_secs(3))
///     .read_token("reader")
///     .build()
///     .expect("a valid URL");
/// # drop(registry);
/// ```
#[derive(Clone)]
pub struct RegistryBuilder {
    urls: Vec<String>,
    tokens: Tokens,
    timeout: Duration,
    tls: TlsSettings,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("urls", &self.urls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryBuilder {
    /// The register token (`Authorization: Bearer` on registration).
    pub fn register_token(mut self, token: impl Into<String>) -> Self {
        self.tokens.register = Some(token.into());
        self
    }

    /// The read token (`GET /servers`).
    pub fn read_token(mut self, token: impl Into<String>) -> Self {
        self.tokens.read = Some(token.into());
        self
    }

    /// The admin token (drain and deregister without a lease; valid everywhere).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.tokens.admin = Some(token.into());
        self
    }

    /// For `https://` registries behind a private CA: trust only these CA certificates
    /// (PEM) instead of the system's roots.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = switchboard_client::Registry::builder(["https://registry.lan:8443"])
    ///     .ca_pem(std::fs::read("/etc/switchboard/ca.pem")?)
    ///     .build()?;
    /// # drop(registry); Ok(()) }
    /// ```
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pem = Some(pem.into());
        self
    }

    /// A client certificate (PEM, its chain after it) and its private key (PEM), for a
    /// registry that asks for one (`[tls] client_auth`).
    pub fn identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long one request may take (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The registry handle.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when no URL is given or one is not `http(s)://host[:port]`,
    /// [`Error::Tls`] when the CA or the client identity cannot be used.
    pub fn build(self) -> Result<Registry> {
        if self.urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "at least one registry URL is needed".into(),
            });
        }
        let nodes = self
            .urls
            .iter()
            .map(|raw| parse_node(raw))
            .collect::<Result<Vec<_>>>()?;
        let tls = crate::tls::client_config(&self.tls).map_err(Error::Tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            .build()
            .map_err(|e| Error::InvalidUrl {
                url: self.urls.join(","),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            inner: Arc::new(Inner {
                http,
                nodes,
                preferred: AtomicUsize::new(0),
                tokens: self.tokens,
                timeout: self.timeout,
                cache: Mutex::new(HashMap::new()),
                jitter_ms: AtomicU64::new(DEFAULT_RECONNECT_JITTER_MS),
            }),
        })
    }
}

fn parse_node(raw: &str) -> Result<Url> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("a host is needed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment expected"));
    }
    // Paths are joined below this one.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Which token a call presents.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    Register,
    Read,
    None,
}

/// What a backend registers (SPEC section 2): only `address` is required.
///
/// ```
/// use switchboard_client::Registration;
/// let r = Registration::new("10.0.0.5:6666")
///     .weight(2)
///     .zone("eu-1")
///     .tag("v2")
///     .max_connections(50_000)
///     .ttl_secs(15)
///     .metadata("build", "1.4.2");
/// assert_eq!(r.address, "10.0.0.5:6666");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// `host:port` devices connect to (IPv6 as `[::1]:6666`).
    pub address: String,
    /// 1..=1000 (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Handed out last at or above this count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Zone label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Tags (e.g. a canary `v2`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free-form labels, at most 32 entries.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// 1..=300 (default 15); heartbeats come every `ttl_secs / 3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
}

impl Registration {
    /// A registration of `address` with every other field defaulted.
    pub fn new(address: impl Into<String>) -> Self {
        Registration {
            address: address.into(),
            ..Registration::default()
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets the connection cap.
    pub fn max_connections(mut self, cap: u64) -> Self {
        self.max_connections = Some(cap);
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the TTL.
    pub fn ttl_secs(mut self, ttl: u32) -> Self {
        self.ttl_secs = Some(ttl);
        self
    }
}

/// A registration as the registry answered it. The lease secret is kept private and
/// never shown by `Debug`.
///
/// ```
/// # async fn doc_server() -> Result<(switchboard::app::Running, String), Box<dyn std::error::Error>> {
/// #     let args = switchboard::cli::ServeArgs { no_forward: true, ..Default::default() };
/// #     let toml = "http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"";
/// #     let config = switchboard::config::Config::from_toml(toml, &args)?;
/// #     let server = switchboard::app::start(config).await?;
/// #     let url = format!("http://{}", server.http_addr);
/// #     Ok((server, url))
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (server, url) = doc_server().await?;
/// use switchboard_client::{Registration, Registry};
/// let registry = Registry::builder([url]).build()?;
/// let lease = registry.register("default", &Registration::new("127.0.0.1:6666")).await?;
/// assert_eq!(lease.heartbeat_secs, 5);
/// assert!(!format!("{lease:?}").contains(lease.secret()));
/// # server.stop().await?; Ok(()) }
/// ```
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Instance id (kept across re-registration of the same address).
    pub id: String,
    /// Service name.
    pub service: String,
    #[serde(rename = "lease")]
    secret: String,
    /// TTL granted.
    pub ttl_secs: u32,
    /// Advised heartbeat period.
    pub heartbeat_secs: u32,
}

impl Lease {
    /// The lease secret (the `X-Lease` header): only its holder may heartbeat, drain
    /// or deregister the instance.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("ttl_secs", &self.ttl_secs)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .finish_non_exhaustive()
    }
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Beat {
    /// TTL in force.
    pub ttl_secs: u32,
    /// Connections the backend is asked to close gracefully before its next
    /// heartbeat (rebalancing or paced evacuation).
    pub shed: u64,
}

/// What a device asks for (SPEC `GET /servers`).
///
/// ```
/// use switchboard_client::Query;
/// let q = Query::new("mqtt").key("device-42").zone("eu-1").tag("v2").limit(3);
/// assert_eq!(q.service, "mqtt");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// Service (default `default`).
    pub service: String,
    /// Affinity key, e.g. a device id.
    pub key: Option<String>,
    /// Preferred zone.
    pub zone: Option<String>,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// 1..=100 (default 5).
    pub limit: Option<u32>,
}

impl Default for Query {
    fn default() -> Self {
        Query::new("default")
    }
}

impl Query {
    /// A query of `service` with no key, zone, tag or limit.
    pub fn new(service: impl Into<String>) -> Self {
        Query {
            service: service.into(),
            key: None,
            zone: None,
            tag: None,
            limit: None,
        }
    }

    /// Sets the affinity key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the preferred zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the tag filter.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets how many servers to return.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("service", self.service.clone())];
        let optional = [("key", &self.key), ("zone", &self.zone), ("tag", &self.tag)];
        params.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| value.clone().map(|v| (name, v))),
        );
        if let Some(limit) = self.limit {
            params.push(("limit", limit.to_string()));
        }
        params
    }
}

/// One server of a ranked list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Server {
    /// Instance id.
    pub id: String,
    /// `host:port` to connect to.
    pub address: String,
    /// Zone label.
    pub zone: Option<String>,
    /// Weight.
    pub weight: u32,
    /// Connections as last reported.
    pub connections: u64,
    /// Load when ranked.
    pub load: f64,
}

/// A ranked list, best first.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServerList {
    /// Service name.
    pub service: String,
    /// Changes whenever the set of live, non-draining instances changes.
    pub version: u64,
    /// Wait a random time below this before reconnecting after a lost connection.
    #[serde(default = "default_jitter")]
    pub reconnect_jitter_ms: u64,
    /// The registry suspects its own network and serves the last known set.
    #[serde(default)]
    pub self_preservation: bool,
    /// Best first.
    pub servers: Vec<Server>,
    /// True when no registry node answered and this is the last good list.
    #[serde(skip)]
    pub from_cache: bool,
}

fn default_jitter() -> u64 {
    DEFAULT_RECONNECT_JITTER_MS
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl Registry {
    /// Starts building a registry handle from one URL per registry node.
    pub fn builder<I, S>(urls: I) -> RegistryBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RegistryBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            tokens: Tokens::default(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: TlsSettings::default(),
        }
    }

    /// The registry nodes, as parsed.
    pub fn nodes(&self) -> Vec<String> {
        self.inner.nodes.iter().map(Url::to_string).collect()
    }

    /// The node that answered last (tried first next time).
    pub fn current_node(&self) -> String {
        let at = self.inner.preferred.load(Ordering::Relaxed);
        self.inner.nodes[at % self.inner.nodes.len()].to_string()
    }

    /// Registers `registration` in `service`; registering an address again replaces
    /// its fields and lease and keeps its id.
    ///
    /// # Errors
    /// [`Error::Api`] for invalid fields, [`Error::Unauthorized`], [`Error::Unreachable`].
    pub async fn register(&self, service: &str, registration: &Registration) -> Result<Lease> {
        let path = format!("v1/services/{service}/instances");
        let body = serde_json::to_value(registration).map_err(|e| Error::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &path,
            Auth::Register,
            None,
            Some(body),
            &[],
            None,
        )
        .await
    }

    /// Reports `connections` for the instance of `lease`.
    ///
    /// # Errors
    /// [`Error::UnknownInstance`] (register again), [`Error::BadLease`],
    /// [`Error::Unreachable`].
    pub async fn heartbeat(&self, lease: &Lease, connections: u64) -> Result<Beat> {
        let path = format!(
            "v1/services/{}/instances/{}/heartbeat",
            lease.service, lease.id
        );
        let body = serde_json::json!({ "connections": connections });
        self.call(
            Method::PUT,
            &path,
            Auth::None,
            Some(lease),
            Some(body),
            &[],
            None,
        )
        .await
    }

    /// Drains the instance of `lease`: never handed out again; with
    /// `evacuate_per_sec`, its heartbeats ask it to close that many connections per
    /// second until it reports none.
    ///
    /// # Errors
    /// As [`Registry::heartbeat`]; [`Error::Api`] for a rate outside 1..=100000.
    pub async fn drain(&self, lease: &Lease, evacuate_per_sec: Option<u32>) -> Result<()> {
        let path = format!("v1/services/{}/instances/{}/drain", lease.service, lease.id);
        let body = evacuate_per_sec.map(|r| serde_json::json!({ "evacuate_per_sec": r }));
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &path,
                Auth::None,
                Some(lease),
                body,
                &[],
                None,
            )
            .await?;
        Ok(())
    }

    /// Deregisters the instance of `lease`: gone from every answer at once.
    ///
    /// # Errors
    /// As [`Registry::heartbeat`].
    pub async fn deregister(&self, lease: &Lease) -> Result<()> {
        let path = format!("v1/services/{}/instances/{}", lease.service, lease.id);
        let _: Option<serde_json::Value> = self
            .call(
                Method::DELETE,
                &path,
                Auth::None,
                Some(lease),
                None,
                &[],
                None,
            )
            .await?;
        Ok(())
    }

    /// The ranked list for `query`. While no node answers, the last good list of the
    /// same query is returned with `from_cache: true`.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when no node answers and nothing is cached; others as
    /// the registry answered.
    pub async fn resolve(&self, query: &Query) -> Result<ServerList> {
        self.resolve_since(query, None).await
    }

    /// A blocking query: answers once the version differs from `since` or `wait`
    /// passes (then with the current list).
    pub(crate) async fn resolve_since(
        &self,
        query: &Query,
        since: Option<(u64, Duration)>,
    ) -> Result<ServerList> {
        let mut params = query.params();
        let mut timeout = None;
        if let Some((version, wait)) = since {
            let secs = wait.as_secs().clamp(1, 60);
            params.push(("since", version.to_string()));
            params.push(("wait_secs", secs.to_string()));
            timeout = Some(self.inner.timeout + Duration::from_secs(secs));
        }
        let answer: Result<ServerList> = self
            .call(
                Method::GET,
                "servers",
                Auth::Read,
                None,
                None,
                &params,
                timeout,
            )
            .await;
        let cache = &self.inner.cache;
        match answer {
            Ok(list) => {
                self.inner
                    .jitter_ms
                    .store(list.reconnect_jitter_ms, Ordering::Relaxed);
                lock(cache).insert(query.clone(), list.clone());
                Ok(list)
            }
            Err(err @ Error::Unreachable { .. }) => match lock(cache).get(query) {
                Some(list) => Ok(ServerList {
                    from_cache: true,
                    ..list.clone()
                }),
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// A random wait in `0..reconnect_jitter_ms` of the last answer (5 s before any):
    /// how long a device should wait after losing its connection.
    ///
    /// ```
    /// let registry = switchboard_client::Registry::builder(["http://127.0.0.1:8080"]).build().unwrap();
    /// assert!(registry.reconnect_delay() < std::time::Duration::from_secs(5));
    /// ```
    pub fn reconnect_delay(&self) -> Duration {
        let jitter = self.inner.jitter_ms.load(Ordering::Relaxed);
        if jitter == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::random_range(0..jitter))
    }

    /// `reconnect_jitter_ms` of the last answer (5 s before any): the bound of
    /// [`Registry::reconnect_delay`].
    ///
    /// ```
    /// let registry = switchboard_client::Registry::builder(["http://127.0.0.1:8080"]).build().unwrap();
    /// assert_eq!(registry.reconnect_jitter(), std::time::Duration::from_secs(5));
    /// ```
    pub fn reconnect_jitter(&self) -> Duration {
        Duration::from_millis(self.inner.jitter_ms.load(Ordering::Relaxed))
    }

    /// One API call with failover: starts at the node that answered last and tries
    /// each node once; a node that cannot be reached or answers 5xx passes the call
    /// to the next. Decodes the success body (`Option<T>` takes an empty 204).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        lease: Option<&Lease>,
        body: Option<serde_json::Value>,
        params: &[(&'static str, String)],
        timeout: Option<Duration>,
    ) -> Result<T> {
        let inner = &self.inner;
        let count = inner.nodes.len();
        let start = inner.preferred.load(Ordering::Relaxed);
        let mut last = String::from("no node tried");
        let mut last_5xx = None;
        for step in 0..count {
            let at = (start + step) % count;
            let url = inner.nodes[at].join(path).map_err(|e| Error::InvalidUrl {
                url: format!("{}{path}", inner.nodes[at]),
                reason: e.to_string(),
            })?;
            let mut request = inner
                .http
                .request(method.clone(), url)
                .timeout(timeout.unwrap_or(inner.timeout))
                .query(params);
            request = self.authorize(request, auth, lease);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(resp) if resp.status().is_server_error() => {
                    last = format!("{} answered {}", inner.nodes[at], resp.status());
                    last_5xx = Some(resp);
                }
                Ok(resp) => {
                    inner.preferred.store(at, Ordering::Relaxed);
                    return decode(resp).await;
                }
                Err(err) => {
                    tracing::debug!(node = %inner.nodes[at], %err, "registry node unreachable");
                    last = format!("{}: {err}", inner.nodes[at]);
                }
            }
        }
        match last_5xx {
            // A node answered, with an error of its own (503 store_unavailable, say):
            // that error is the answer.
            Some(resp) => decode(resp).await,
            None => Err(Error::Unreachable { last }),
        }
    }

    fn authorize(
        &self,
        request: RequestBuilder,
        auth: Auth,
        lease: Option<&Lease>,
    ) -> RequestBuilder {
        let tokens = &self.inner.tokens;
        let token = match auth {
            Auth::Register => tokens.register.as_ref().or(tokens.admin.as_ref()),
            Auth::Read => tokens.read.as_ref().or(tokens.admin.as_ref()),
            Auth::None => tokens.admin.as_ref(),
        };
        let request = match lease {
            Some(lease) => request.header("X-Lease", &lease.secret),
            None => request,
        };
        match token {
            // A lease proves itself; the admin token would only widen the authority.
            Some(_) if lease.is_some() => request,
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Decode(e.to_string()))?;
    if status.is_success() {
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        return serde_json::from_slice(text).map_err(|e| Error::Decode(e.to_string()));
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ),
    };
    Err(match (status, code.as_str()) {
        (StatusCode::UNAUTHORIZED, _) => Error::Unauthorized(message),
        (StatusCode::NOT_FOUND, "unknown_instance") => Error::UnknownInstance(message),
        (StatusCode::FORBIDDEN, "bad_lease") => Error::BadLease(message),
        _ => Error::Api {
            status: status.as_u16(),
            code,
            message,
        },
    })
}
