//! nginx as the benches run it: finding it (and other tools) without installing
//! anything, its version for the report, and the temp path directives a private
//! prefix needs (nginx's HTTP modules would otherwise point them at `/var/lib/nginx`).
//!
//! Starts it on a configuration a bench wrote (`spawn`); owns no configuration of a
//! bench's server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use super::procs::Server;

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

/// The temp path directives for `bin` (those its build has modules for), each under
/// `dir`, one per line, indented for an `http {}` block.
pub fn temp_path_directives(bin: &Path, dir: &Path) -> String {
    let built = version_flags(bin);
    let d = dir.display();
    TEMP_PATHS
        .iter()
        .filter(|(module, _)| {
            module.is_empty() || !built.contains(&format!("--without-{module}_module"))
        })
        .map(|(_, directive)| format!("    {directive} {d}/{directive};\n"))
        .collect()
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

/// Writes `conf` as `nginx.conf` in `dir` and starts nginx (`bin`) on it, with `dir`
/// as its prefix and error log; the caller sets the address and waits for it.
pub fn spawn(bin: &Path, dir: tempfile::TempDir, conf: &str) -> anyhow::Result<Server> {
    let d = dir.path().display().to_string();
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(format!("{d}/"))
        .arg("-e")
        .arg(format!("{d}/error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null());
    Server::spawn("nginx", cmd, dir, false)
}
