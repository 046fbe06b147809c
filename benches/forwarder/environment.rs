//! The machine the run starts on: the descriptor limit (this process re-executed under
//! `ulimit -n`, the limit the proxies get, the wrapper that raises theirs), the tools
//! the chosen setups need (installed with `apt-get` unless `SB_BENCH_NO_INSTALL`), the
//! versions and settings printed at the top, and the `rustc` processes that say others
//! compete for the cores.
//!
//! Must not start a proxy or measure anything: `proxy.rs` and the phases do.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use crate::Config;
use crate::proxy::Setup;
use crate::support::report::loadavg;
use crate::support::{knobs, sample};

/// File-descriptor limit asked for the bench process and the proxies (the hard limit
/// caps it when this container may not raise that).
pub const NOFILE: u64 = 65_536;

/// The shell wrapper that raises the descriptor limit and execs the command (the PID
/// stays the proxy's).
pub const ULIMIT_WRAPPER: &str =
    "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$@\"";

/// Raises this process's `RLIMIT_NOFILE` by re-executing itself through a shell's
/// `ulimit -n` when the soft limit is too low for the memory test (no libc binding
/// needed; the proxies, spawned later, inherit it too).
pub fn raise_nofile() -> Result<()> {
    let soft = nofile_soft_limit().unwrap_or(0);
    // The held client sockets plus the echo backend's sockets, and some spare.
    let need = 2 * knobs::num("SB_BENCH_CONNS", 5000, 1, 20_000) + 1024;
    if soft >= need {
        return Ok(());
    }
    if std::env::var_os("SB_BENCH_REEXEC").is_some() {
        eprintln!("warning: RLIMIT_NOFILE is {soft}, below {need}; the memory test may fail");
        return Ok(());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let err = Command::new("sh")
        .arg("-c")
        .arg(ULIMIT_WRAPPER)
        .arg("sh")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("SB_BENCH_REEXEC", "1")
        .exec();
    Err(anyhow!(err).context("re-executing under ulimit -n"))
}

fn nofile_soft_limit() -> Option<u64> {
    nofile_limit(3)
}

/// The hard `RLIMIT_NOFILE` of this process.
pub fn nofile_hard_limit() -> Option<u64> {
    nofile_limit(4)
}

/// Field `field` (3 soft, 4 hard) of the "Max open files" line of /proc/self/limits.
fn nofile_limit(field: usize) -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line.split_whitespace().nth(field)? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// What `program args` printed (stdout, then stderr); an error when it failed.
pub fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{program} {args:?} failed: {}", text.trim());
    }
    Ok(text)
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what the chosen setups need with `apt-get` (we run as root).
pub fn ensure_tools(setups: &[Setup]) -> Result<()> {
    let mut packages = Vec::new();
    if setups.contains(&Setup::Nginx) || setups.contains(&Setup::NginxSpec) {
        if !have("nginx", "-v") {
            packages.extend(["nginx", "libnginx-mod-stream"]);
        } else if nginx_stream_module().is_err() {
            packages.push("libnginx-mod-stream");
        }
    }
    if setups.contains(&Setup::Haproxy) && !have("haproxy", "-v") {
        packages.push("haproxy");
    }
    if !have("iperf3", "--version") {
        packages.push("iperf3");
    }
    if packages.is_empty() {
        return Ok(());
    }
    if knobs::is_set("SB_BENCH_NO_INSTALL") {
        bail!("missing packages {packages:?} and SB_BENCH_NO_INSTALL is set");
    }
    println!("installing {packages:?} with apt-get");
    let status = Command::new("apt-get")
        .arg("update")
        .stdin(Stdio::null())
        .status()
        .context("apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("apt-get install")?;
    if !status.success() {
        bail!("apt-get install -y {packages:?} failed");
    }
    Ok(())
}

/// Where nginx's dynamic stream module lives, or `None` when it is built in.
pub fn nginx_stream_module() -> Result<Option<PathBuf>> {
    let v = command_output("nginx", &["-V"])?;
    if v.split_whitespace().any(|a| a == "--with-stream") {
        return Ok(None);
    }
    let candidates = [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
        "/etc/nginx/modules/ngx_stream_module.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .map(Some)
        .ok_or_else(|| anyhow!("nginx has no stream module (libnginx-mod-stream)"))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// The header of the run: tool versions, kernel, CPUs, limits and settings.
pub fn print_environment(cfg: &Config) {
    println!("== Switchboard forwarder benchmark (loopback 127.0.0.1) ==");
    let version = |p: &str, a: &str| {
        command_output(p, &[a])
            .map(|t| first_line(&t).to_owned())
            .unwrap_or_else(|e| format!("unavailable ({e})"))
    };
    println!("nginx:    {}", version("nginx", "-v"));
    println!("haproxy:  {}", version("haproxy", "-v"));
    println!("iperf3:   {}", version("iperf3", "--version"));
    println!("kernel:   {}", version("uname", "-r"));
    println!(
        "cpus: {}; CLK_TCK {}; RLIMIT_NOFILE bench {}, proxies {}; loadavg {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cfg.clk_tck,
        nofile_soft_limit().unwrap_or(0),
        cfg.nofile,
        loadavg()
    );
    println!(
        "settings: {} s per measurement, {} rate workers, {} held connections, UDP {} \
         clients x {} s; setups {:?}",
        cfg.secs,
        cfg.workers,
        cfg.conns,
        cfg.udp_clients,
        cfg.udp_secs,
        cfg.setups.iter().map(|s| s.name()).collect::<Vec<_>>()
    );
    let rustc = count_rustc();
    if rustc > 0 {
        println!("warning: {rustc} rustc process(es) running now: others are compiling");
    }
    println!("switchboard: {}", cfg.switchboard.display());
}

/// How many `rustc` processes are running (others compiling on this machine).
pub fn count_rustc() -> usize {
    let stats = sample::pids().into_iter().filter_map(sample::stat);
    stats.filter(|s| s.name == "rustc").count()
}
