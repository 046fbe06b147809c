//! Processes a bench starts and stops by PID: the switchboard binary and the systems it
//! is compared with. Their stderr goes to a log file in their temp dir, read for the
//! addresses they listen on and for the warnings and errors they log.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often a starting or stopping process is looked at.
const POLL: Duration = Duration::from_millis(20);

/// Warnings and errors a server logged.
#[derive(Debug, Default, Clone)]
pub struct LogInfo {
    pub warnings: u64,
    pub errors: u64,
    /// Of those, logged after [`Server::mark_load_stopped`].
    pub after_load: u64,
    /// The first few of those lines.
    pub lines: Vec<String>,
}

/// A process we started, with its temp dir and log.
pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub pid: u32,
    /// Where clients reach it (set by the caller, or from its log).
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    /// Length of the log when the load stopped.
    load_stopped_at: Option<usize>,
}

impl Server {
    /// Spawns `cmd` in `dir` with stdin closed and stderr (with `stdout_to_log`, stdout
    /// too; else as `cmd` says) into `dir/stderr.log`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: tempfile::TempDir,
        stdout_to_log: bool,
    ) -> anyhow::Result<Server> {
        let log = dir.path().join("stderr.log");
        let err_file = fs::File::create(&log).context("creating the log file")?;
        if stdout_to_log {
            cmd.stdout(Stdio::from(err_file.try_clone()?));
        }
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stderr(Stdio::from(err_file))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Server {
            name,
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            log,
            load_stopped_at: None,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log shows an address after each of `markers` (in that order in
    /// the answer); fails when the process exits first or after `timeout`.
    pub fn wait_logged(
        &mut self,
        markers: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + timeout;
        for _ in 0..1_000_000 {
            let text = self.log_text();
            let found: Option<Vec<SocketAddr>> =
                markers.iter().map(|m| logged_addr(&text, m)).collect();
            if let Some(addrs) = found {
                return Ok(addrs);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.name, text.trim());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "{} logged no {markers:?} line within {timeout:?}: {}",
            self.name,
            self.log_text().trim()
        )
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} (pid {}) exited: {status}", self.name, self.pid),
            Err(err) => bail!("{} (pid {}): {err}", self.name, self.pid),
        }
    }

    /// Lines logged from now on count as after the load.
    pub fn mark_load_stopped(&mut self) {
        self.load_stopped_at = Some(self.log_text().len());
    }

    /// Warnings and errors in the log, the first `max_lines` of them kept.
    pub fn log_info(&self, max_lines: usize) -> LogInfo {
        let text = self.log_text();
        let mut info = LogInfo::default();
        let mut at = 0;
        for line in text.lines() {
            let after = self.load_stopped_at.is_some_and(|stop| at >= stop);
            at += line.len() + 1;
            let warn = line.contains(" WARN ") || line.contains("[WARN");
            let error =
                line.contains(" ERROR ") || line.contains("[ERROR") || line.contains("panicked");
            if !(warn || error) {
                continue;
            }
            if error {
                info.errors += 1;
            } else {
                info.warnings += 1;
            }
            info.after_load += u64::from(after);
            if info.lines.len() < max_lines {
                let tag = if after { "[after load stopped] " } else { "" };
                info.lines.push(format!("{tag}{line}"));
            }
        }
        info
    }

    /// [`stop_all`] for this one.
    pub fn stop(&mut self, timeout: Duration) -> String {
        stop_all(&mut [&mut self.child], timeout)
            .pop()
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals this child's own PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address after `marker` in a log, if logged yet.
pub fn logged_addr(log: &str, marker: &str) -> Option<SocketAddr> {
    let at = log.find(marker)? + marker.len();
    log[at..].split_whitespace().next()?.parse().ok()
}

/// Sends `signal` (`TERM`, `KILL`) to `pid` with kill(1); true when it was sent.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM to every child by PID at once, then waits (up to `timeout`) for all, then
/// SIGKILL to those left. Says how each ended.
pub fn stop_all(children: &mut [&mut Child], timeout: Duration) -> Vec<String> {
    let mut notes: Vec<Option<String>> = vec![None; children.len()];
    for (note, child) in notes.iter_mut().zip(children.iter_mut()) {
        if let Ok(Some(status)) = child.try_wait() {
            *note = Some(format!("had already exited ({status})"));
        } else if !signal(child.id(), "TERM") {
            let _ = child.kill();
            let _ = child.wait();
            *note = Some("SIGTERM could not be sent; killed".to_owned());
        }
    }
    let started = Instant::now();
    for _ in 0..1_000_000 {
        if started.elapsed() >= timeout || notes.iter().all(Option::is_some) {
            break;
        }
        for (note, child) in notes.iter_mut().zip(children.iter_mut()) {
            if note.is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                let secs = started.elapsed().as_secs_f64();
                *note = Some(format!("stopped by SIGTERM in {secs:.2} s ({status})"));
            }
        }
        std::thread::sleep(POLL);
    }
    let killed = format!("did NOT exit within {timeout:?} of SIGTERM; killed (SIGKILL by pid)");
    notes
        .into_iter()
        .zip(children.iter_mut())
        .map(|(note, child)| {
            note.unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                killed.clone()
            })
        })
        .collect()
}

/// Starts `cmd` (the switchboard binary, or a wrapper that execs it) as
/// `serve --http 127.0.0.1:0 <args>` in `dir`, with `RUST_LOG=info` and no tokens, and
/// waits until it logs `http listening on` and each of `more_markers`: the addresses,
/// in that order, all on loopback.
pub fn start_switchboard(
    cmd: Command,
    dir: tempfile::TempDir,
    args: &[&str],
    more_markers: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Server, Vec<SocketAddr>)> {
    start_switchboard_at(cmd, dir, "127.0.0.1:0", args, more_markers, timeout)
}

/// [`start_switchboard`] with the HTTP API on `http` (a fixed port, for a bench that
/// restarts the server where its clients already point).
pub fn start_switchboard_at(
    mut cmd: Command,
    dir: tempfile::TempDir,
    http: &str,
    args: &[&str],
    more_markers: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Server, Vec<SocketAddr>)> {
    cmd.args(["serve", "--http", http])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .env_remove("SWITCHBOARD_REGISTER_TOKEN")
        .env_remove("SWITCHBOARD_READ_TOKEN")
        .stdout(Stdio::null());
    let mut server = Server::spawn("switchboard", cmd, dir, false)?;
    let markers: Vec<&str> = std::iter::once("http listening on ")
        .chain(more_markers.iter().copied())
        .collect();
    let addrs = server.wait_logged(&markers, timeout)?;
    if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("switchboard listens on {addr}, not loopback");
    }
    server.addr = addrs[0];
    Ok((server, addrs))
}

/// A loopback port free right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

/// Whether `127.0.0.1:port` has a listening TCP socket, or with `udp` a bound UDP one,
/// by `/proc/net/tcp` or `/proc/net/udp` (without connecting to it: a probe connection
/// would reach the backend, which confuses iperf3's server).
pub fn is_listening(port: u16, udp: bool) -> bool {
    let (table, state) = if udp {
        ("/proc/net/udp", "07")
    } else {
        ("/proc/net/tcp", "0A")
    };
    let Ok(table) = fs::read_to_string(table) else {
        return false;
    };
    let want = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&state)
    })
}
