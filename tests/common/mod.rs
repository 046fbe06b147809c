//! Test harness, one set of helpers for every test file.
//!
//! - [`Server`]: the server in the test's own process, started through
//!   `switchboard::app::start` with a `Config` parsed by `Config::from_toml` (the
//!   real config path), HTTP and forward listeners on `127.0.0.1:0`, `sqlite::memory:`.
//!   Tests talk to it over real sockets only. It logs into a buffer of its own
//!   ([`Server::wait_log`]) and stops when its handle drops (or [`Server::stop`]).
//! - [`process::Server`]: the real binary as a child process, for what needs one
//!   (command line, signals, kill -9, restarts, the environment, cluster nodes).
//! - [`Api`]: the HTTP helpers both kinds of server offer (through `Deref`).
//! - [`jump`] and [`as_time_passes`]: liveness without real sleeps, by moving the
//!   tokio clock that an in-process server's registry runs on.
//! - [`pg`]: a PostgreSQL database per test and a cuttable proxy; [`echo`]: echo
//!   backends.

#![allow(dead_code)]

pub mod certs;
pub mod echo;
pub mod pg;
pub mod process;
pub mod proxy_header;
pub mod raw;
pub mod tools;

use std::io::Write;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::app::{self, Running};
use switchboard::cli::ServeArgs;
use switchboard::config::Config;

#[allow(unused_imports)] // Not every test file relays bytes.
pub use echo::{Echo, echo_through};

/// How long a test waits (in real time) for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// How a server is started (in-process or as a process).
#[derive(Default, Clone)]
pub struct Options {
    /// Store URL; `sqlite::memory:` without it.
    pub db: Option<String>,
    /// Config file text.
    pub config: Option<String>,
    /// Environment of the process (process servers only).
    pub env: Vec<(String, String)>,
    /// More command-line arguments (process servers only).
    pub extra: Vec<String>,
    /// `--forward` flags; with none (and `forwards == 0`), `--no-forward`.
    pub forward: Vec<String>,
    /// Forward listeners expected (from `forward` or the config file).
    pub forwards: usize,
    /// `RLIMIT_NOFILE`, soft and hard, the process starts with (process servers
    /// only: the limit is the process's, so it is set by `prlimit` before exec).
    pub nofile: Option<u64>,
    /// Every request through hyper and axum, without the hand-written path of the
    /// hot routes (in-process servers only; tests compare the two).
    pub no_fast_path: bool,
}

impl Options {
    /// A SQLite file store.
    pub fn db(path: &Path) -> Self {
        Options::db_url(&format!("sqlite://{}", path.display()))
    }

    /// Any store URL (e.g. a PostgreSQL test database).
    pub fn db_url(url: &str) -> Self {
        Options {
            db: Some(url.to_owned()),
            ..Options::default()
        }
    }
}

/// An HTTP client of one server, with the requests tests make.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: switchboard::tls::client::reqwest_client(),
        }
    }

    /// A client of `https://localhost:PORT` that trusts only `ca_pem` (and presents
    /// `identity`, certificate and key PEM, when given).
    pub fn https(addr: SocketAddr, ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Api {
        let mut files = switchboard::tls::client::ClientFiles::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            Some(path)
        };
        files.ca_cert = write("ca.pem", ca_pem);
        if let Some((cert, key)) = identity {
            files.client_cert = write("client.pem", cert);
            files.client_key = write("client.key", key);
        }
        let client = switchboard::tls::client::reqwest_builder(&files)
            .expect("TLS client files")
            .build()
            .expect("HTTPS client");
        Api {
            base: format!("https://localhost:{}", addr.port()),
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn register(&self, service: &str, body: Value) -> Registered {
        let resp = self
            .client
            .post(self.url(&format!("/v1/services/{service}/instances")))
            .json(&body)
            .send()
            .await
            .expect("register request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("register body");
        assert!(
            status == 201 || status == 200,
            "register answered {status}: {body}"
        );
        Registered::from_answer(service, status, body)
    }

    pub async fn register_addr(&self, service: &str, address: &str) -> Registered {
        self.register(service, json!({ "address": address })).await
    }

    /// Heartbeat; returns (status, body).
    pub async fn heartbeat(&self, r: &Registered, connections: u64) -> (u16, Value) {
        let resp = self
            .client
            .put(self.url(&format!(
                "/v1/services/{}/instances/{}/heartbeat",
                r.service, r.id
            )))
            .header("X-Lease", &r.lease)
            .json(&json!({ "connections": connections }))
            .send()
            .await
            .expect("heartbeat request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET` a path; returns (status, JSON body or Null).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics`: the Prometheus exposition text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).send().await;
        resp.expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `POST` a raw JSON body (possibly malformed); returns (status, JSON body or Null).
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The addresses of a `/servers` answer, best first.
    pub async fn servers(&self, query: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/servers{query}")).await;
        assert_eq!(status, 200, "{body}");
        addresses(&body)
    }

    /// The `version` of a service's `/servers` answer.
    pub async fn version(&self, service: &str) -> Value {
        self.get(&format!("/servers?service={service}")).await.1["version"].clone()
    }

    /// The admin listing's instance with this id.
    pub async fn instance(&self, service: &str, id: &str) -> Option<Value> {
        let (_, body) = self.get(&format!("/v1/services/{service}/instances")).await;
        body["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
    }
}

/// A registration answer.
#[derive(Debug, Clone)]
pub struct Registered {
    pub service: String,
    pub id: String,
    pub lease: String,
    pub status: u16,
    pub body: Value,
}

impl Registered {
    /// From a successful registration answer.
    pub fn from_answer(service: &str, status: u16, body: Value) -> Registered {
        Registered {
            service: service.to_owned(),
            id: body["id"].as_str().expect("id").to_owned(),
            lease: body["lease"].as_str().expect("lease").to_owned(),
            status,
            body,
        }
    }
}

pub fn addresses(body: &Value) -> Vec<String> {
    body["servers"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| s["address"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The error code of an error answer.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Polls `check` every 50 ms until it returns Some, or fails after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `s` until its `/servers` for `service` lists exactly `expected` (sorted),
/// within `limit`; returns how long it took.
pub async fn converge(s: &Api, service: &str, expected: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut got = s.servers(&format!("?service={service}&limit=100")).await;
        got.sort();
        if got == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} did not show {expected:?} within {limit:?}: {got:?}",
            s.base
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves the tokio clock of the test's runtime forward by `by` in one jump, and lets
/// it run on in real time again.
///
/// An in-process server's liveness clock, its sweep and flush tickers, the
/// forwarder's `fail_timeout` and idle timers all run on this clock, so a jump is
/// what `by` of waiting would be, without the wait. Time is paused only for the jump
/// itself: a runtime that stays paused advances on its own whenever it idles, also
/// while it waits for the SQLite worker thread or a socket, which would fire store
/// and HTTP timeouts that real time never would. Keep `by` well under the shortest
/// timeout that may be running meanwhile (the 1 s `/readyz` and cluster sync limits,
/// the 5 s store limit): jump in steps, as [`as_time_passes`] does.
///
/// Needs a current-thread runtime (`#[tokio::test]`) whose clock is not paused.
pub async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Like [`eventually`], but moves the clock forward by `step` (see [`jump`]) between
/// two polls instead of sleeping: a condition that takes seconds of server time is
/// met in milliseconds. Gives up after 10 minutes of server time or [`PATIENCE`].
pub async fn as_time_passes<T, F, Fut>(what: &str, step: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    assert!(
        step > Duration::ZERO && step <= Duration::from_millis(500),
        "steps of at most 500 ms keep store and HTTP timeouts from firing"
    );
    let max_steps = Duration::from_secs(600).as_millis() / step.as_millis().max(1);
    let deadline = Instant::now() + PATIENCE;
    for _ in 0..max_steps {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        jump(step).await;
        // Let the timers that came due run (the sweep, a relay's idle timer).
        tokio::task::yield_now().await;
    }
    panic!("{what} did not happen within 10 minutes of server time")
}

/// Log lines of an in-process server, tee'd to the test's captured output.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<String>>);

impl LogBuffer {
    fn find(&self, needle: &str) -> Option<String> {
        let text = self.0.lock().unwrap_or_else(|p| p.into_inner());
        text.lines().find(|l| l.contains(needle)).map(str::to_owned)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        // Shown with the test's output when it fails.
        print!("{text}");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

/// The server running inside the test process; its HTTP helpers come from [`Api`].
///
/// Started within a current-thread runtime (`#[tokio::test]`), all its tasks run on
/// the test's thread, so its log goes to this handle's buffer (a thread-local
/// subscriber): one in-process server per test.
pub struct Server {
    api: Api,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where each forward listener listens, in configuration order.
    pub forward_addrs: Vec<SocketAddr>,
    /// Where the DNS server listens, when `[dns]` is configured.
    pub dns_addr: Option<SocketAddr>,
    running: Option<Running>,
    logs: LogBuffer,
    _log: tracing::subscriber::DefaultGuard,
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    /// Starts a server with an in-memory store and no forward listener.
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    /// Starts a server as `switchboard serve --http 127.0.0.1:0 --db ...` with the
    /// config file text of `options` would.
    pub async fn start_with(options: Options) -> Server {
        assert!(
            options.env.is_empty() && options.extra.is_empty() && options.nofile.is_none(),
            "environment, extra arguments and an fd limit need a process server (common::process)"
        );
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let args = ServeArgs {
            http: Some("127.0.0.1:0".into()),
            db: Some(options.db.unwrap_or_else(|| "sqlite::memory:".into())),
            forward: options.forward,
            no_forward: options.forwards == 0,
            ..ServeArgs::default()
        };
        let mut config = Config::from_toml(options.config.as_deref().unwrap_or(""), &args)
            .unwrap_or_else(|err| panic!("test configuration: {err}"));
        config.http_fast_path = !options.no_fast_path;
        let running = app::start(config)
            .await
            .unwrap_or_else(|err| panic!("server did not start: {err}; log:\n{}", logs.text()));
        assert_eq!(
            running.forward_addrs.len(),
            options.forwards,
            "forward listeners started"
        );
        Server {
            api: Api::new(running.http_addr),
            http_addr: running.http_addr,
            forward_addrs: running.forward_addrs.clone(),
            dns_addr: running.dns_addr,
            running: Some(running),
            logs,
            _log: guard,
        }
    }

    /// Waits (in real time) until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.logs.find(needle) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; log:\n{}",
                self.logs.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shuts down gracefully and waits for it, as SIGTERM would.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Starts the shutdown; what is left of it ends with the test's runtime.
        if let Some(running) = self.running.take() {
            running.shutdown_token().cancel();
        }
    }
}
