//! The HAProxy setup: `mode tcp`, `balance leastconn`, default `nbthread`, run with
//! `-db` (one process), `maxconn` from the descriptor limit; TCP only (the community
//! edition has no UDP).
//!
//! Must not measure: it only starts the process `proxy.rs` hands back.

use std::fs;
use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::Config;
use crate::proxy::{Proxy, spawn_listening};
use crate::support::procs::free_port;

/// HAProxy `mode tcp` in front of `backend`, on a free loopback port.
pub fn start_haproxy(backend: SocketAddr, cfg: &Config) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // HAProxy wants two descriptors per connection plus some, within the limit.
    let maxconn = (cfg.nofile.saturating_sub(200) / 2).clamp(1000, 20_000);
    let conf = format!(
        "global
    maxconn {maxconn}
defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance leastconn
    server s1 {backend}
"
    );
    let conf_path = dir.path().join("haproxy.cfg");
    fs::write(&conf_path, conf)?;
    let args = [
        "-db".to_owned(),
        "-f".to_owned(),
        conf_path.display().to_string(),
    ];
    let server =
        spawn_listening("haproxy", "haproxy", &args, dir, port, false).context("haproxy")?;
    Ok(Proxy::started(
        SocketAddr::from(([127, 0, 0, 1], port)),
        server,
    ))
}
