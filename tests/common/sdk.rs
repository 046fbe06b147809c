//! The harness `tests/sdk_examples.rs` and `tests/sdk_storm.rs` share to run the
//! programs of `sdk-examples/`: where they are, the environment they read, compiling the
//! C device and the Java examples, and child processes whose output lines are collected
//! (killed by PID on drop). Each file says how patient it is ([`Patience`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one condition may take to become true, and how often a condition that
/// is polled is looked at again.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    pub limit: Duration,
    pub poll: Duration,
}

/// `sdk-examples/` of this checkout.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk-examples")
}

/// Polls `probe` until it gives a value, for at most `patience.limit`.
pub fn eventually<T>(patience: Patience, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience.limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(patience.poll);
    }
}

/// A free loopback port (bound, then released): connects to it are refused.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// `program args...` with what every example reads to find Switchboard: `server` as
/// `SWITCHBOARD_SERVER`, the service `default`, `forwarder` as `SWITCHBOARD_FORWARDER`
/// and a ping a second; never a CA or a client certificate from the test's environment.
pub fn example_command<I, S>(program: &str, args: I, server: &str, forwarder: &str) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("SWITCHBOARD_SERVER", server)
        .env("SWITCHBOARD_SERVICE", "default")
        .env("SWITCHBOARD_FORWARDER", forwarder)
        .env("PING_SECS", "1")
        .env_remove("SWITCHBOARD_CA_CERT")
        .env_remove("SWITCHBOARD_CLIENT_CERT")
        .env_remove("SWITCHBOARD_CLIENT_KEY");
    cmd
}

/// Fails the test unless `output` (of `tool`) is a success that printed nothing on
/// stderr (no warning either).
pub fn assert_clean(tool: &str, output: &Output) {
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{tool}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The C device (`sdk-examples/c/device.c`) compiled with `gcc -O2 -Wall -Wextra`, and
/// no warning, into the target dir as `name`.
pub fn c_device(name: &str) -> PathBuf {
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let gcc = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&binary)
        .arg(examples().join("c").join("device.c"))
        .output()
        .expect("run gcc");
    assert_clean("gcc", &gcc);
    binary
}

/// `javac -Xlint:all` on `sources` (of `sdk-examples/java/`) with `classpath` (when
/// there is one), into the target dir's `dir`: that directory and what javac said.
pub fn javac(dir: &str, classpath: &[&str], sources: &[&str]) -> (PathBuf, Output) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let java = examples().join("java");
    let mut cmd = Command::new("javac");
    cmd.arg("-Xlint:all");
    if !classpath.is_empty() {
        cmd.arg("-cp").arg(classpath.join(":"));
    }
    cmd.arg("-d").arg(&out);
    for source in sources {
        cmd.arg(java.join(source));
    }
    let output = cmd.output().expect("run javac");
    (out, output)
}

/// The lines of `lines` that contain `needle`.
pub fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// A child process whose stdout and stderr lines are collected; killed by PID on drop
/// (its output is printed then if the test is failing).
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    patience: Patience,
}

impl Proc {
    /// Waits on it take at most `patience.limit`.
    pub fn spawn(name: &str, cmd: &mut Command, patience: Patience) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let outputs: [Box<dyn Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
        for output in outputs {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines: rx,
            seen: Vec::new(),
            patience,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lines taken in so far (see [`Proc::pump`]).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Takes in the lines printed so far.
    pub fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits until what it printed satisfies `done`.
    pub fn wait(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + self.patience.limit;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "{}: no {what}; output:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits until `n` lines contain `needle`.
    pub fn wait_count(&mut self, needle: &str, n: usize) {
        self.wait(&format!("line #{n} with {needle:?}"), |seen| {
            count(seen, needle) >= n
        });
    }

    /// The `skip`-th (0-based) line containing `needle`, waiting for it.
    pub fn wait_nth(&mut self, needle: &str, skip: usize) -> String {
        self.wait_count(needle, skip + 1);
        let mut matching = self.seen.iter().filter(|l| l.contains(needle));
        matching.nth(skip).expect("the line waited for").clone()
    }

    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_nth(needle, 0)
    }

    /// Lines so far that contain `needle`.
    pub fn count(&mut self, needle: &str) -> usize {
        self.pump();
        count(&self.seen, needle)
    }

    /// Sends SIGTERM (by PID) and waits for the exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.name);
        let what = format!("{} to exit after SIGTERM", self.name);
        eventually(self.patience, &what, || {
            self.child.try_wait().ok().flatten()
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.pump();
            eprintln!("--- {} output:\n{}", self.name, self.seen.join("\n"));
        }
    }
}
