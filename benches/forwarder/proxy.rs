//! The setups and the process each one runs: `Setup` (the names and `SB_BENCH_SETUPS`
//! keys), `Sessions` (how a UDP setup keeps a client's session), and `Proxy`, a running
//! setup: where clients connect, its processes (a master and the workers it forked),
//! their CPU and RSS, its logged problems, and stopping it by PID. Each proxy's own
//! configuration is in its file: `nginx.rs`, `haproxy.rs`, `switchboard.rs`; `direct`
//! is no process at all.
//!
//! Must not generate load or read a phase's figures: the phases do.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::support::procs::{self, Server};
use crate::support::sample;
use crate::{Config, START_TIMEOUT, STOP_TIMEOUT, environment, haproxy, nginx, switchboard};

/// What the client connects to: the backend itself, or one of the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Direct,
    Nginx,
    NginxSpec,
    Haproxy,
    Switchboard,
}

impl Setup {
    /// Every setup, in the order of the tables' columns.
    pub const ALL: [Setup; 5] = [
        Setup::Direct,
        Setup::Nginx,
        Setup::NginxSpec,
        Setup::Haproxy,
        Setup::Switchboard,
    ];

    /// The column heading.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Nginx => "nginx",
            Setup::NginxSpec => "nginx hc+ka",
            Setup::Haproxy => "HAProxy",
            Setup::Switchboard => "Switchboard",
        }
    }

    /// The name in `SB_BENCH_SETUPS`.
    pub fn key(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Nginx => "nginx",
            Setup::NginxSpec => "nginx-spec",
            Setup::Haproxy => "haproxy",
            Setup::Switchboard => "switchboard",
        }
    }
}

/// How long a proxy keeps a UDP client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// For as long as the client sends (within the idle timeout): one backend socket
    /// per client for the whole run.
    PerClient,
    /// Until its first reply (`udp_responses = 1`, `proxy_responses 1`): every request
    /// is a new session.
    PerRequest,
}

/// One running setup: the address clients connect to and the proxy's processes.
pub struct Proxy {
    pub listen: SocketAddr,
    server: Option<Server>,
    /// Descendants seen after start (nginx workers), with their start times, so that
    /// only those very processes are killed if they outlive their master.
    extra: Vec<(u32, u64)>,
}

impl Proxy {
    /// The setup in front of the TCP `backend` (`direct`: the backend itself).
    pub fn start(setup: Setup, backend: SocketAddr, cfg: &Config) -> Result<Proxy> {
        match setup {
            Setup::Direct => Ok(Proxy::direct(backend)),
            Setup::Nginx => nginx::start_nginx(backend, "", cfg),
            Setup::NginxSpec => nginx::start_nginx(
                backend,
                "\n        proxy_half_close on;\n        proxy_socket_keepalive on;",
                cfg,
            ),
            Setup::Haproxy => haproxy::start_haproxy(backend, cfg),
            Setup::Switchboard => switchboard::start_switchboard(backend, cfg),
        }
    }

    /// The setup of phase 4 in front of both UDP backends.
    pub fn start_udp(
        setup: Setup,
        backends: [SocketAddr; 2],
        sessions: Sessions,
        cfg: &Config,
    ) -> Result<Proxy> {
        match setup {
            Setup::Direct => Ok(Proxy::direct(backends[0])),
            Setup::Nginx => nginx::start_nginx_udp(backends, sessions, cfg),
            Setup::NginxSpec => bail!("nginx's half-close and keepalive are TCP's"),
            Setup::Haproxy => bail!("HAProxy's community edition proxies no UDP"),
            Setup::Switchboard => switchboard::start_switchboard_udp(backends, sessions, cfg),
        }
    }

    fn direct(backend: SocketAddr) -> Proxy {
        Proxy {
            listen: backend,
            server: None,
            extra: Vec::new(),
        }
    }

    /// A started proxy listening on `listen`, its workers remembered.
    pub fn started(listen: SocketAddr, server: Server) -> Proxy {
        let root = server.pid;
        let extra = sample::process_tree(root)
            .into_iter()
            .filter(|&p| p != root)
            .filter_map(|p| sample::stat(p).map(|s| (p, s.start)))
            .collect();
        Proxy {
            listen,
            server: Some(server),
            extra,
        }
    }

    /// The proxy's processes now (empty for `direct`).
    pub fn pids(&self) -> Vec<u32> {
        self.server
            .as_ref()
            .map(|s| sample::process_tree(s.pid))
            .unwrap_or_default()
    }

    /// CPU ticks of the proxy's processes (`None` for direct).
    pub fn cpu(&self) -> Option<u64> {
        self.server
            .as_ref()
            .map(|_| sample::ticks_sum(&self.pids()))
    }

    /// The proxy's RSS in KiB, all its processes (`None` for direct).
    pub fn rss(&self) -> Option<u64> {
        self.server
            .as_ref()
            .map(|_| sample::status_sum(&self.pids(), "VmRSS:"))
    }

    /// The warning and error lines the proxy logged so far (its stderr; nginx's
    /// `error.log`).
    pub fn log_problems(&self) -> Vec<String> {
        let Some(server) = &self.server else {
            return Vec::new();
        };
        let nginx_log = fs::read_to_string(server.dir.path().join("error.log"));
        let text = server.log_text() + &nginx_log.unwrap_or_default();
        let marks = [
            " WARN ", " ERROR ", "panicked", "[warn]", "[error]", "[crit]",
        ];
        text.lines()
            .filter(|l| marks.iter().any(|m| l.contains(m)))
            .map(str::to_owned)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(STOP_TIMEOUT);
        }
        for (pid, start) in self.extra.drain(..) {
            if sample::stat(pid).is_some_and(|s| s.start == start) {
                procs::signal(pid, "KILL");
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` run through the `ulimit -n` wrapper (the PID stays the program's).
pub fn wrapped(program: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(environment::ULIMIT_WRAPPER)
        .arg("sh")
        .arg(program);
    cmd
}

/// Starts `program args` through the wrapper in `dir`, output to its log, and waits
/// until it listens on `port` (TCP, or with `udp` UDP); stopped again when that fails.
pub fn spawn_listening(
    name: &'static str,
    program: &str,
    args: &[String],
    dir: tempfile::TempDir,
    port: u16,
    udp: bool,
) -> Result<Server> {
    let mut cmd = wrapped(Path::new(program));
    cmd.args(args);
    let mut server = Server::spawn(name, cmd, dir, true)?;
    let deadline = Instant::now() + START_TIMEOUT;
    for _ in 0..10_000 {
        if let Some(status) = server.child.try_wait()? {
            bail!("exited with {status}: {}", server.log_text().trim());
        }
        if procs::is_listening(port, udp) {
            // Let a master fork its workers.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(server);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop(STOP_TIMEOUT);
    bail!(
        "not listening on 127.0.0.1:{port} after {START_TIMEOUT:?}: {}",
        server.log_text().trim()
    )
}
