//! The real `switchboard` binary as a child process, for what needs one: the command
//! line, signals (SIGTERM drain, exit codes), kill -9 and restarts on the same file,
//! the environment, and several cluster nodes. It binds port 0 and reports its ports
//! in its log, which is read here. Each process is killed by PID when its handle
//! drops.

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Api, Options, PATIENCE};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// A running server process; its HTTP helpers come from [`Api`].
pub struct Server {
    child: Child,
    api: Api,
    /// Where the HTTP API listens.
    pub http_addr: std::net::SocketAddr,
    /// Where each forward listener listens, in start order.
    pub forward_addrs: Vec<std::net::SocketAddr>,
    /// Every line the server logged so far is sent here.
    logs: mpsc::Receiver<String>,
    /// Lines already read from `logs`.
    pub seen: Vec<String>,
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    /// Starts a server with an in-memory store.
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    /// Starts a server and waits for its HTTP listener (and `options.forwards`
    /// forward listeners).
    pub fn start_with(options: Options) -> Server {
        assert!(
            !options.no_fast_path,
            "the fast path's knob is in-process only (common::Server)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // prlimit sets the limit on itself and execs the server: same PID, and the
        // hard limit lowered too, so the server's raising changes nothing.
        let mut cmd = match options.nofile {
            None => Command::new(binary()),
            Some(n) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={n}:{n}")).arg(binary());
                prlimit
            }
        };
        cmd.arg("serve").arg("--http").arg("127.0.0.1:0");
        if options.forwards == 0 {
            cmd.arg("--no-forward");
        }
        for f in &options.forward {
            cmd.arg("--forward").arg(f);
        }
        cmd.arg("--db")
            .arg(options.db.unwrap_or_else(|| "sqlite::memory:".into()));
        if let Some(config) = options.config {
            let path = dir.path().join("switchboard.toml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&options.extra)
            .env("RUST_LOG", "info")
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .env_remove("SWITCHBOARD_REGISTER_TOKEN")
            .env_remove("SWITCHBOARD_READ_TOKEN")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _keep_dir_alive = dir;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let port = line
                        .split("http listening on 127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|p| p.parse::<u16>().ok());
                    seen.push(line);
                    if let Some(port) = port {
                        break port;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server did not report its HTTP port; log:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        let mut server = Server {
            child,
            api: Api::new(([127, 0, 0, 1], port).into()),
            http_addr: ([127, 0, 0, 1], port).into(),
            forward_addrs: Vec::new(),
            logs: rx,
            seen,
        };
        while server.forward_addrs.len() < options.forwards {
            let skip = server.forward_addrs.len();
            let line = server.wait_log_nth("forward listening on ", skip);
            let addr = line
                .split("forward listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("unparsable forward line {line:?}"));
            server.forward_addrs.push(addr);
        }
        server
    }

    /// The `skip`-th (0-based) log line containing `needle`.
    pub fn wait_log_nth(&mut self, needle: &str, skip: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.seen.iter().filter(|l| l.contains(needle)).nth(skip) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.logs.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no log line with {needle:?}; log:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line);
        }
    }

    /// Every line logged so far (those not read yet are read now, without waiting).
    pub fn logged(&mut self) -> &[String] {
        while let Ok(line) = self.logs.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.wait_log_nth(needle, 0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (to this child, by PID): reload.
    pub fn hup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Sends SIGTERM (to this child, by PID) and waits for the exit code.
    pub fn terminate(self) -> i32 {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        self.terminate_wait()
    }

    /// Waits for the process to exit (after a signal sent elsewhere); its exit code.
    pub fn terminate_wait(mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
