//! Test harness: starts the real `switchboard` binary on port 0 and talks to it over
//! real HTTP. Each server is killed by PID when its handle drops.

#![allow(dead_code)]

pub mod pg;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a test waits for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A running server process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where each forward listener listens, in start order.
    pub forward_addrs: Vec<std::net::SocketAddr>,
    /// Every line the server logged so far is sent here.
    logs: mpsc::Receiver<String>,
    /// Lines already read from `logs`.
    pub seen: Vec<String>,
    pub client: reqwest::Client,
}

/// Arguments and environment for a server start.
#[derive(Default, Clone)]
pub struct Options {
    pub db: Option<String>,
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    pub extra: Vec<String>,
    /// `--forward` flags; with none (and `forwards == 0`), `--no-forward`.
    pub forward: Vec<String>,
    /// Forward listeners to wait for (from `forward` or the config file).
    pub forwards: usize,
}

impl Options {
    pub fn db(path: &Path) -> Self {
        Options {
            db: Some(format!("sqlite://{}", path.display())),
            ..Options::default()
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

impl Server {
    /// Starts a server with an in-memory store.
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    /// Starts a server and waits for its HTTP listener.
    pub fn start_with(options: Options) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg("--http").arg("127.0.0.1:0");
        if options.forwards == 0 {
            cmd.arg("--no-forward");
        }
        for f in &options.forward {
            cmd.arg("--forward").arg(f);
        }
        cmd.arg("--db")
            .arg(options.db.unwrap_or_else(|| "sqlite::memory:".into()));
        if let Some(config) = options.config {
            let path = dir.path().join("switchboard.toml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&options.extra)
            .env("RUST_LOG", "info")
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .env_remove("SWITCHBOARD_REGISTER_TOKEN")
            .env_remove("SWITCHBOARD_READ_TOKEN")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _keep_dir_alive = dir;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let port = line
                        .split("http listening on 127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|p| p.parse::<u16>().ok());
                    seen.push(line);
                    if let Some(port) = port {
                        break port;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "server did not report its HTTP port; log:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            forward_addrs: Vec::new(),
            logs: rx,
            seen,
            client: reqwest::Client::new(),
        };
        while server.forward_addrs.len() < options.forwards {
            let skip = server.forward_addrs.len();
            let line = server.wait_log_nth("forward listening on ", skip);
            let addr = line
                .split("forward listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("unparsable forward line {line:?}"));
            server.forward_addrs.push(addr);
        }
        server
    }

    /// The `skip`-th (0-based) log line containing `needle`.
    pub fn wait_log_nth(&mut self, needle: &str, skip: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.seen.iter().filter(|l| l.contains(needle)).nth(skip) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.logs.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no log line with {needle:?}; log:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(self) -> i32 {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        self.terminate_wait()
    }

    /// Waits for the process to exit (after a signal sent elsewhere); its exit code.
    pub fn terminate_wait(mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.logs.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no log line with {needle:?}; log:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
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
        Registered {
            service: service.to_owned(),
            id: body["id"].as_str().expect("id").to_owned(),
            lease: body["lease"].as_str().expect("lease").to_owned(),
            status,
            body,
        }
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

    /// The addresses of a `/servers` answer, best first.
    pub async fn servers(&self, query: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/servers{query}")).await;
        assert_eq!(status, 200, "{body}");
        addresses(&body)
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The error code of an error answer.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A tokio echo backend on loopback that counts the connections it accepted.
pub struct Echo {
    pub addr: std::net::SocketAddr,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// An echo server on `127.0.0.1:0`.
    pub async fn start() -> Echo {
        Echo::start_on("127.0.0.1:0").await
    }

    /// An echo server on `addr`.
    pub async fn start_on(addr: &str) -> Echo {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind echo");
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting (existing connections end with their tasks' sockets).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, writes `payload`, and reads the echo back (with a deadline).
pub async fn echo_through(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect forwarder");
    let mut got = vec![0u8; payload.len()];
    let io = async {
        let (mut r, mut w) = sock.split();
        let write = async {
            w.write_all(payload).await.expect("write");
        };
        let read = async { r.read_exact(&mut got).await.map(|_| ()) };
        let (_, read) = tokio::join!(write, read);
        read
    };
    tokio::time::timeout(PATIENCE, io)
        .await
        .expect("echo timed out")
        .expect("echo read failed");
    got
}
