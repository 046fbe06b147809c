//! The Rust SDK examples (`sdk-examples/rust`, built by `cargo test` as this crate's
//! examples) end to end against the real server: the backend registers and serves,
//! the device gets an echo through it, and the backend's reported count reaches the
//! registry; when its server dies, the device keeps the reconnect contract (the
//! jitter, then a growing backoff) until another answers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchboard::app;
use switchboard::cli::ServeArgs;
use switchboard::config::Config;

const PATIENCE: Duration = Duration::from_secs(20);

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    debug.join("examples").join(name)
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Program {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Program {
    fn start(name: &str, args: &[&str], url: &str, env: &[(&str, &str)]) -> Program {
        let mut cmd = Command::new(example(name));
        cmd.args(args)
            .env("SWITCHBOARD_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Program {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle`, waiting up to [`PATIENCE`].
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {needle:?}; output:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real server in-process on port 0 with an in-memory store, and its URL.
async fn serve() -> (app::Running, String) {
    serve_with("").await
}

/// [`serve`] with more TOML.
async fn serve_with(extra: &str) -> (app::Running, String) {
    let args = ServeArgs {
        no_forward: true,
        ..ServeArgs::default()
    };
    let toml = format!("http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"\n{extra}");
    let config = Config::from_toml(&toml, &args).unwrap();
    let server = app::start(config).await.unwrap();
    let url = format!("http://{}", server.http_addr);
    (server, url)
}

/// The example backend on a free port, once it says it is registered; and its address.
fn registered_backend(url: &str) -> (Program, String) {
    let mut backend = Program::start("backend", &["127.0.0.1:0"], url, &[]);
    let address = backend
        .wait_for("listening on ")
        .trim_start_matches("listening on ")
        .to_owned();
    backend.wait_for("registered ");
    (backend, address)
}

// Multi-threaded: the test thread blocks reading the programs' output while the
// in-process server goes on answering on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_backend_and_device_work_end_to_end() {
    let (server, url) = serve().await;

    let (backend, address) = registered_backend(&url);

    let mut device = Program::start("device", &["device-1"], &url, &[("ROUNDS", "20")]);
    assert_eq!(
        device.wait_for("connected to "),
        format!("connected to {address}")
    );
    device.wait_for("echo ok");
    // The backend's heartbeat carries its live count to the registry.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body: serde_json::Value = switchboard::tls::client::reqwest_client()
            .get(format!("{url}/v1/services/default/instances"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["instances"][0]["connections"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "count never reached the registry: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(device);
    drop(backend);
    server.stop().await.unwrap();
}

/// The seed scenario's last step: after one backend has reported more connections,
/// a device on the client crate lands on the other, less loaded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_device_lands_on_the_less_loaded_backend() {
    let (server, url) = serve().await;

    let (busy, busy_addr) = registered_backend(&url);
    let (idle, idle_addr) = registered_backend(&url);

    // Three devices hold connections to the busy one, which reports them.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&busy_addr).await.unwrap());
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body: serde_json::Value = switchboard::tls::client::reqwest_client()
            .get(format!("{url}/v1/services/default/instances"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reported = body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["address"] == busy_addr.as_str())
            .map(|i| i["connections"].clone());
        if reported == Some(serde_json::json!(3)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 connections never reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut device = Program::start("device", &["device-9"], &url, &[("ROUNDS", "1")]);
    assert_eq!(
        device.wait_for("connected to "),
        format!("connected to {idle_addr}")
    );
    device.wait_for("echo ok");
    drop(held);
    drop((device, busy, idle));
    server.stop().await.unwrap();
}

/// The number right after `prefix` in `line` (`reconnecting in 120 ms`).
fn number_after(line: &str, prefix: &str) -> u64 {
    let rest = line
        .split_once(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {line:?}"))
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {line:?}"))
}

/// SPEC 11 in the example device: when its server dies it waits below the jitter,
/// backs off below caps of 1 s, then 2 s, does not exit, and connects to the next
/// server that comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_device_backs_off_and_keeps_trying_when_its_server_dies() {
    let (server, url) = serve_with("[rebalance]\nreconnect_jitter_ms = 200").await;

    let (first, first_addr) = registered_backend(&url);
    let mut device = Program::start("device", &["device-3"], &url, &[]);
    assert_eq!(
        device.wait_for("connected to "),
        format!("connected to {first_addr}")
    );
    device.wait_for("echo ok");
    // Killed: it stays listed until its TTL passes, and refuses.
    drop(first);
    device.wait_for("connection lost");
    let jitter = number_after(&device.wait_for("reconnecting in "), "reconnecting in ");
    assert!(jitter < 200, "jitter {jitter} ms");
    for cap in [1_000, 2_000] {
        let line = device.wait_for(&format!("(up to {cap} ms)"));
        assert!(number_after(&line, "backing off ") < cap, "{line}");
    }
    assert!(
        device.child.try_wait().expect("status").is_none(),
        "the device keeps trying"
    );

    let (second, second_addr) = registered_backend(&url);
    device.wait_for(&format!("connected to {second_addr}"));
    let echoes = device.seen.iter().filter(|l| l.contains("echo ok")).count();
    let deadline = Instant::now() + PATIENCE;
    while device.seen.iter().filter(|l| l.contains("echo ok")).count() == echoes {
        let left = deadline.saturating_duration_since(Instant::now());
        match device.lines.recv_timeout(left) {
            Ok(line) => device.seen.push(line),
            Err(_) => panic!("no echo from {second_addr}:\n{}", device.seen.join("\n")),
        }
    }
    drop((device, second));
    server.stop().await.unwrap();
}
