//! The baseline's setup: nginx as one process (`daemon off; master_process off;
//! worker_processes 1;`) answering `return 200 "ok\n"` on a free loopback port, with
//! its prefix, pid file, temp paths and error log in a temp dir of its own; and
//! finding the tools (nginx, wrk) without installing anything.
//!
//! Owns no figure: `wrk.rs` measures it like every other phase.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::support::http;
use crate::support::procs::{self, Server};

/// The temp path directives nginx's HTTP modules would otherwise point at
/// `/var/lib/nginx`, each with the module it belongs to (a build without the module,
/// as `nginx-light` may be, rejects the directive).
const TEMP_PATHS: &[(&str, &str)] = &[
    ("", "client_body_temp_path"),
    ("http_proxy", "proxy_temp_path"),
    ("http_fastcgi", "fastcgi_temp_path"),
    ("http_uwsgi", "uwsgi_temp_path"),
    ("http_scgi", "scgi_temp_path"),
];

/// `program` on `PATH` (or in an `sbin` directory, where Debian puts nginx).
pub fn find_tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .take(256)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The first line `program args` prints (stdout, else stderr), for the report.
pub fn version(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        return "version unknown".to_owned();
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("version unknown")
        .to_owned()
}

/// Starts nginx (`bin`) with the `return 200` server, and waits until it answers.
pub async fn start(bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("nginx temp dir")?;
    let port = procs::free_port()?;
    let d = dir.path().display();
    let built = version_flags(bin);
    let temp_paths: String = TEMP_PATHS
        .iter()
        .filter(|(module, _)| {
            module.is_empty() || !built.contains(&format!("--without-{module}_module"))
        })
        .map(|(_, directive)| format!("    {directive} {d}/{directive};\n"))
        .collect();
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
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf).context("writing nginx.conf")?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(format!("{d}/"))
        .arg("-e")
        .arg(format!("{d}/error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null());
    let mut server = Server::spawn("nginx", cmd, dir, false)?;
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

/// What `nginx -V` says it was built with.
fn version_flags(bin: &Path) -> String {
    Command::new(bin)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
        })
        .unwrap_or_default()
}
