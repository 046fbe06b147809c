//! The Switchboard setup: the release binary under test with `--forward` and the TCP
//! backend registered over its API (TTL 300 s), or with a `[[forward]] protocol =
//! "udp"` listener and both UDP backends as `[[static]]` instances, ready once it logged
//! them up.
//!
//! Must not measure: it only starts the process `proxy.rs` hands back.

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proxy::{Proxy, Sessions, wrapped};
use crate::support::http::{self, JSON};
use crate::support::procs;
use crate::support::report::join;
use crate::{Config, START_TIMEOUT};

/// The Switchboard service the UDP listener forwards to.
const UDP_SERVICE: &str = "udpbench";

/// Switchboard forwarding `127.0.0.1:0` to service `bench`, with `backend` registered.
/// `SB_BENCH_TCP_KEEPALIVE_SECS` sets the listener's `tcp_keepalive_secs` (0: off), to
/// weigh what the keepalive timers cost per connection.
pub fn start_switchboard(backend: SocketAddr, cfg: &Config) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--db".to_owned(), "sqlite::memory:".to_owned()];
    match std::env::var("SB_BENCH_TCP_KEEPALIVE_SECS") {
        Ok(secs) => {
            let secs: u64 = secs.trim().parse()?;
            let conf_path = dir.path().join("switchboard.toml");
            fs::write(
                &conf_path,
                format!(
                    "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"bench\"\n\
                     tcp_keepalive_secs = {secs}\n"
                ),
            )?;
            args.extend(["--config".to_owned(), conf_path.display().to_string()]);
        }
        Err(_) => args.extend(["--forward".to_owned(), "127.0.0.1:0=bench".to_owned()]),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, addrs) = procs::start_switchboard(
        wrapped(&cfg.switchboard),
        dir,
        &args,
        &["forward listening on "],
        START_TIMEOUT,
    )?;
    let proxy = Proxy::started(addrs[1], server);
    let body = format!(r#"{{"address":"{backend}","ttl_secs":300}}"#);
    let path = "/v1/services/bench/instances";
    let headers = [JSON, ("Connection", "close")];
    let req = http::request("POST", path, addrs[0], &headers, body.as_bytes());
    let answer = http::one_shot_blocking(addrs[0], &req, Duration::from_secs(10))?;
    if answer.status != 201 && answer.status != 200 {
        let text = String::from_utf8_lossy(&answer.body);
        bail!("registering the backend: HTTP {}: {text}", answer.status);
    }
    Ok(proxy)
}

/// Switchboard with one UDP forward listener to both UDP backends as `[[static]]`
/// instances (with `Sessions::PerRequest`, `udp_responses = 1`); ready once it logged
/// both up (their health check is a TCP connect, which the backends accept).
pub fn start_switchboard_udp(
    backends: [SocketAddr; 2],
    sessions: Sessions,
    cfg: &Config,
) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let responses = match sessions {
        Sessions::PerClient => "",
        Sessions::PerRequest => "udp_responses = 1\n",
    };
    let statics = join(backends, "", |b| {
        format!("[[static]]\nservice = \"{UDP_SERVICE}\"\naddress = \"{b}\"\n")
    });
    let conf = format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"{UDP_SERVICE}\"\n\
         protocol = \"udp\"\n{responses}{statics}"
    );
    let conf_path = dir.path().join("switchboard.toml");
    fs::write(&conf_path, conf)?;
    let conf_path = conf_path.display().to_string();
    let args = ["--db", "sqlite::memory:", "--config", &conf_path];
    let (server, addrs) = procs::start_switchboard(
        wrapped(&cfg.switchboard),
        dir,
        &args,
        &["forward listening on udp "],
        START_TIMEOUT,
    )?;
    let deadline = Instant::now() + START_TIMEOUT;
    for _ in 0..10_000 {
        let up = server.log_text().matches("static instance up").count();
        if up >= backends.len() {
            return Ok(Proxy::started(addrs[1], server));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the static UDP instances were not up after {START_TIMEOUT:?}: {}",
        server.log_text().trim()
    )
}
