//! The nginx setups: `stream` with `least_conn` in front of one TCP backend (its
//! defaults, or with `proxy_half_close on; proxy_socket_keepalive on;` for `nginx
//! hc+ka`), and `listen ... udp reuseport` in front of both UDP backends; one master
//! with `worker_processes auto`, its config, pid file and error log in a temp dir.
//!
//! Must not measure: it only starts the process `proxy.rs` hands back.

use std::fs;
use std::net::SocketAddr;

use anyhow::Result;

use crate::Config;
use crate::proxy::{Proxy, Sessions, spawn_listening};
use crate::support::procs::{self, free_port};

/// The idle timeout of both proxies' UDP sessions (Switchboard's default).
const UDP_IDLE_SECS: u64 = 20;

/// nginx `stream` in front of `backend`, with `extra` directives in its `server`.
pub fn start_nginx(backend: SocketAddr, extra: &str, cfg: &Config) -> Result<Proxy> {
    let port = free_port()?;
    let stream = format!(
        "    upstream backend {{
        least_conn;
        server {backend};
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass backend;{extra}
    }}"
    );
    nginx(cfg, port, false, &stream)
}

/// nginx's `listen ... udp` in front of both UDP backends, set as Switchboard's UDP
/// listener is: sessions per client address (`reuseport`), 20 s idle, and with
/// `Sessions::PerRequest` one reply per session.
pub fn start_nginx_udp(
    backends: [SocketAddr; 2],
    sessions: Sessions,
    cfg: &Config,
) -> Result<Proxy> {
    let port = procs::free_udp_port()?;
    let [a, b] = backends;
    let responses = match sessions {
        Sessions::PerClient => "",
        Sessions::PerRequest => "\n        proxy_responses 1;",
    };
    let stream = format!(
        "    upstream backend {{
        least_conn;
        server {a};
        server {b};
    }}
    server {{
        listen 127.0.0.1:{port} udp reuseport;
        proxy_pass backend;
        proxy_timeout {UDP_IDLE_SECS}s;{responses}
    }}"
    );
    nginx(cfg, port, true, &stream)
}

/// Starts nginx with `stream` as its stream block, listening on `port`.
fn nginx(cfg: &Config, port: u16, udp: bool, stream: &str) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let load = cfg
        .nginx_stream_module
        .as_ref()
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let nofile = cfg.nofile;
    // Each proxied connection takes two; one worker may get them all.
    let worker_connections = nofile.saturating_sub(64).clamp(1024, 32_768);
    let conf = format!(
        "{load}daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
stream {{
{stream}
}}
"
    );
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let args = [
        "-p".to_owned(),
        format!("{d}/"),
        "-e".to_owned(),
        format!("{d}/error.log"),
        "-c".to_owned(),
        conf_path.display().to_string(),
    ];
    let error_log = dir.path().join("error.log");
    let server = spawn_listening("nginx", "nginx", &args, dir, port, udp).map_err(|err| {
        let errors = fs::read_to_string(&error_log).unwrap_or_default();
        err.context(format!("nginx: {}", errors.trim()))
    })?;
    Ok(Proxy::started(
        SocketAddr::from(([127, 0, 0, 1], port)),
        server,
    ))
}
