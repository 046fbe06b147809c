//! The baseline's setup: nginx as one process (`daemon off; master_process off;
//! worker_processes 1;`) answering `return 200 "ok\n"` on a free loopback port, with
//! its prefix, pid file, temp paths and error log in a temp dir of its own.
//!
//! Owns no figure: `wrk.rs` measures it like every other phase.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::support::procs::{self, Server};
use crate::support::{http, nginx};

/// Starts nginx (`bin`) with the `return 200` server, and waits until it answers.
pub async fn start(bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("nginx temp dir")?;
    let port = procs::free_port()?;
    let d = dir.path().display();
    let temp_paths = nginx::temp_path_directives(bin, dir.path());
    // keepalive_requests: nginx closes a keep-alive connection after 1,000 requests by
    // default; switchboard never does, so both keep every connection for the phase.
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    keepalive_requests 100000000;
    default_type text/plain;
{temp_paths}    server {{
        listen 127.0.0.1:{port};
        location / {{
            return 200 \"ok\\n\";
        }}
    }}
}}
"
    );
    let mut server = nginx::spawn(bin, dir, &conf)?;
    server.addr = SocketAddr::from(([127, 0, 0, 1], port));
    let probe = http::request("GET", "/", server.addr, &[], b"");
    if let Err(err) = http::wait_ready(server.addr, &probe, crate::POLL).await {
        let errors = fs::read_to_string(server.dir.path().join("error.log")).unwrap_or_default();
        return Err(err.context(format!(
            "nginx: {} {}",
            server.log_text().trim(),
            errors.trim()
        )));
    }
    server.check_alive()?;
    Ok(server)
}
