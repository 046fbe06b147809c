//! The baseline: nginx 1.22 (Debian, OpenSSL) as one process (`daemon off;
//! master_process off; worker_processes 1;`) serving HTTPS on the same certificate
//! and key, TLS 1.2 and 1.3, session tickets on (its default), answering
//! `return 200` with the same body Switchboard's `/servers` gives, so both write the
//! same bytes per request.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::pki::Pki;
use crate::support::nginx;
use crate::support::procs::{self, Server};

/// Starts nginx (`bin`) on a free loopback port; the caller waits until it answers.
pub fn start(bin: &Path, pki: &Pki, body: &str) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("nginx temp dir")?;
    let port = procs::free_port()?;
    let d = dir.path().display();
    let temp_paths = nginx::temp_path_directives(bin, dir.path());
    // nginx's `return` takes the body as a quoted string: JSON's quotes escaped.
    let quoted = body.replace('\\', "\\\\").replace('"', "\\\"");
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{
    worker_connections 65536;
}}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/json;
{temp_paths}    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            return 200 \"{quoted}\";
        }}
    }}
}}
",
        cert = pki.cert.display(),
        key = pki.key.display(),
    );
    let mut server = nginx::spawn(bin, dir, &conf)?;
    server.addr = SocketAddr::from(([127, 0, 0, 1], port));
    Ok(server)
}
