//! Every SDK example device (Python, Node.js, Java, C, shell) in a reconnect storm,
//! black-box, against the client reconnect contract (SPEC section 11).
//!
//! The registry here is scripted: a std HTTP server on `127.0.0.1:0` that answers each
//! `GET /servers` with the next list of its script (JSON, or one `host:port` per line
//! with `X-Reconnect-Jitter-Ms` for `Accept: text/plain`) and logs when it was asked.
//! A device runs with `SWITCHBOARD_TIME_SCALE` (every contract wait divided by
//! [`SCALE`]) through three phases:
//!
//! 1. Resolve: the first server is a dead port. The device must ask `/servers` again
//!    and take the first server of the new answer that it has not tried yet (the
//!    answers are rotated so that walking the first list, or taking the n-th server of
//!    the n-th answer, both pick the wrong one).
//! 2. The live server dies (listener dropped, connections shut). The device waits less
//!    than the answers' `reconnect_jitter_ms`, then fails attempt after attempt: each
//!    attempt asks `/servers` once per server of the list, and each is followed by a
//!    wait below `min(120 s, 1 s × 2^n)`, the caps doubling to 120 s and staying there.
//! 3. A connection shorter than 60 s (scaled) keeps the count; one that lasted longer
//!    resets it (the next cap is 1 s again).
//!
//! Each wait a device prints is checked against the registry's clock: the time between
//! the two `/servers` requests around it (or between the kill and the next request) is
//! at least the wait, scaled, and at most the wait plus [`SLACK`].
//!
//! A missing toolchain fails the test where `CI` is set and prints `SKIPPED` otherwise,
//! as in `tests/sdk_examples.rs`. Self-contained: std sockets and threads, child
//! processes killed by PID, every wait under a deadline.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// The harness tests/sdk_examples.rs uses too; this file uses a part of it.
#[allow(dead_code)]
#[path = "common/sdk.rs"]
mod sdk;
#[path = "common/tools.rs"]
mod tools;
use sdk::{Patience, Proc, count, eventually, example_command, examples, free_port};

/// `SWITCHBOARD_TIME_SCALE` for every device: 1 s of the contract is 10 ms here.
const SCALE: u32 = 100;
/// The scripted registry's `reconnect_jitter_ms` (the devices' default is 5000).
const JITTER_MS: u64 = 1_000;
/// The contract's backoff: a random wait in `0..min(CAP_MS, BASE_MS × 2^n)`.
const BASE_MS: u64 = 1_000;
const CAP_MS: u64 = 120_000;
/// How long a connection must last for the count to reset.
const RESET_AFTER_MS: u64 = 60_000;
/// Failed attempts in a row in phase 2: caps 1, 2, 4 ... 64 s, then 120 s twice.
const BACKOFFS: usize = 9;
/// How long any one condition may take to become true (polled every 20 ms).
const PATIENCE: Patience = Patience {
    limit: Duration::from_secs(30),
    poll: Duration::from_millis(20),
};
/// What a device may spend between two requests besides its wait: reading the answer,
/// a refused connect, a new HTTP connection (a process start for curl), a busy machine.
const SLACK: Duration = Duration::from_secs(3);
/// How much earlier than asked a timer may fire (Node.js reads a cached loop clock).
const EARLY: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------
// The scripted registry and the echo servers
// ---------------------------------------------------------------------------------------

/// A `/servers` that answers from a script and logs each request.
struct Registry {
    addr: SocketAddr,
    state: Arc<Mutex<Script>>,
    _accepting: Accepting,
}

#[derive(Default)]
struct Script {
    /// Answered one each, in order; the last one answered is repeated after them.
    next: VecDeque<Vec<String>>,
    last: Vec<String>,
    /// When each request's head was read, and its target.
    asked: Vec<(Instant, String)>,
}

impl Registry {
    fn start() -> Registry {
        let state = Arc::new(Mutex::new(Script::default()));
        let shared = Arc::clone(&state);
        let accepting = Accepting::start(None, move |conn| answer(conn, &shared));
        Registry {
            addr: accepting.addr,
            state,
            _accepting: accepting,
        }
    }

    /// The answers from the next request on.
    fn script(&self, answers: &[&[&str]]) {
        let mut state = self.state.lock().expect("script lock");
        state.next = answers
            .iter()
            .map(|list| list.iter().map(|s| (*s).to_owned()).collect())
            .collect();
    }

    /// When each request so far came.
    fn asked(&self) -> Vec<Instant> {
        let state = self.state.lock().expect("script lock");
        state.asked.iter().map(|(at, _)| *at).collect()
    }

    /// Waits until `n` requests came.
    fn wait_asked(&self, n: usize) -> Vec<Instant> {
        eventually(PATIENCE, &format!("{n} requests to /servers"), || {
            let asked = self.asked();
            (asked.len() >= n).then_some(asked)
        })
    }

    fn targets(&self) -> Vec<String> {
        let state = self.state.lock().expect("script lock");
        state.asked.iter().map(|(_, t)| t.clone()).collect()
    }
}

/// One request on `conn`, answered from the script, then closed (`Connection: close`).
fn answer(mut conn: TcpStream, state: &Mutex<Script>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let at = Instant::now();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let text = head
        .lines()
        .any(|l| l.starts_with("accept:") && l.contains("text/plain"));
    let servers = {
        let mut state = state.lock().expect("script lock");
        if let Some(next) = state.next.pop_front() {
            state.last = next;
        }
        state.asked.push((at, target.clone()));
        state.last.clone()
    };
    let (kind, body) = if text {
        (
            "text/plain",
            servers.iter().map(|s| format!("{s}\n")).collect(),
        )
    } else {
        let servers: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, address)| {
                serde_json::json!({"id": format!("s{i}"), "address": address, "zone": "",
                                   "weight": 1, "connections": 0, "load": 0.0})
            })
            .collect();
        let body = serde_json::json!({"service": "default", "version": 1,
                                      "reconnect_jitter_ms": JITTER_MS, "servers": servers});
        ("application/json", body.to_string())
    };
    let status = if target.starts_with("/servers") {
        "200 OK"
    } else {
        "404 Not Found"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nX-Reconnect-Jitter-Ms: {JITTER_MS}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.shutdown(Shutdown::Write);
    // Let the client read to the end before the socket is dropped.
    let _ = conn.read(&mut buf);
}

/// Connections an [`Accepting`] keeps a handle of, with when each was accepted.
type Kept = Arc<Mutex<Vec<(Instant, TcpStream)>>>;

/// A listener on `127.0.0.1:0` whose accept loop runs `serve` on a thread per
/// connection, until [`Accepting::stop`] (or a drop) closes it.
struct Accepting {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Accepting {
    /// With `keep`, each connection is put there (a second handle to it) before its
    /// thread starts, so that once [`Accepting::stop`] returned, all of them are there.
    fn start(keep: Option<Kept>, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Accepting {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if let Ok(conn) = conn {
                    if let (Some(keep), Ok(handle)) = (&keep, conn.try_clone()) {
                        keep.lock()
                            .expect("kept lock")
                            .push((Instant::now(), handle));
                    }
                    let serve = Arc::clone(&serve);
                    std::thread::spawn(move || serve(conn));
                }
                // Checked after serving: a connection queued before the one that wakes
                // this loop is served (and kept) too.
                if stopping.load(Ordering::SeqCst) {
                    return; // drops the listener: the port refuses from now on
                }
            }
        });
        Accepting {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listener: returns once the port refuses connections.
    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept, which then sees the flag (this connection is served
        // like any other, and ends when it drops here). Refused: a connection that came
        // in after the flag was set woke it first, and the listener is closed already.
        let wake = match TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)) {
            Err(e) if e.kind() != std::io::ErrorKind::ConnectionRefused => {
                panic!("a connection to wake the accept loop: {e}")
            }
            wake => wake,
        };
        thread.join().expect("accept thread");
        drop(wake);
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An echo server whose death is a server's death: no listener, connections shut.
struct Echo {
    addr: String,
    accepting: Accepting,
    open: Kept,
}

impl Echo {
    fn start() -> Echo {
        let open = Kept::default();
        let accepting = Accepting::start(Some(Arc::clone(&open)), |mut conn| {
            if let Ok(mut reader) = conn.try_clone() {
                let _ = std::io::copy(&mut reader, &mut conn);
            }
        });
        Echo {
            addr: accepting.addr.to_string(),
            accepting,
            open,
        }
    }

    /// Dies: stops listening, then shuts every connection. Returns when the
    /// connections were shut (no device can have noticed before) and when the first of
    /// them was accepted.
    fn kill(&mut self) -> (Instant, Option<Instant>) {
        self.accepting.stop();
        let open = std::mem::take(&mut *self.open.lock().expect("kept lock"));
        let killed = Instant::now();
        for (_, conn) in &open {
            let _ = conn.shutdown(Shutdown::Both);
        }
        (killed, open.first().map(|(at, _)| *at))
    }
}

/// A loopback port nothing listens on (bound, then released): connects are refused.
fn dead_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------------------------
// The device and what it prints
// ---------------------------------------------------------------------------------------

/// What `device` printed so far, as events.
fn events(device: &mut Proc) -> Vec<Event> {
    device.pump();
    device.seen().iter().map(|l| Event::parse(l)).collect()
}

/// One line of a device, as far as the contract is concerned.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// `servers A B ...`: an answer to `/servers`.
    Servers(Vec<String>),
    /// `cannot connect to A...`
    Refused(String),
    /// `connected to A`
    Connected(String),
    /// `echo ok`
    Echo,
    /// `connection lost...`
    Lost,
    /// `reconnecting in N ms`: the wait after a lost connection.
    Jitter(u64),
    /// `backing off N ms (up to C ms)`: the wait after a failed attempt.
    Backoff(u64, u64),
    Other(String),
}

impl Event {
    fn parse(line: &str) -> Event {
        let number = |s: &str| s.trim().parse::<u64>().ok();
        if let Some(rest) = line.strip_prefix("servers ") {
            return Event::Servers(rest.split_whitespace().map(str::to_owned).collect());
        }
        if let Some(rest) = line.strip_prefix("cannot connect to ") {
            return Event::Refused(address(rest));
        }
        if let Some(rest) = line.strip_prefix("connected to ") {
            return Event::Connected(address(rest));
        }
        if line == "echo ok" {
            return Event::Echo;
        }
        if line.starts_with("connection lost") {
            return Event::Lost;
        }
        if let Some(wait) = line
            .strip_prefix("reconnecting in ")
            .and_then(|r| r.strip_suffix(" ms"))
            .and_then(number)
        {
            return Event::Jitter(wait);
        }
        if let Some((wait, cap)) = line
            .strip_prefix("backing off ")
            .and_then(|r| r.strip_suffix(" ms)"))
            .and_then(|r| r.split_once(" ms (up to "))
            .and_then(|(w, c)| Some((number(w)?, number(c)?)))
        {
            return Event::Backoff(wait, cap);
        }
        Event::Other(line.to_owned())
    }
}

/// The address at the start of `rest` (up to `:` followed by a space, or the end).
fn address(rest: &str) -> String {
    rest.split(": ").next().unwrap_or(rest).trim().to_owned()
}

/// The contract's cap after `n` failed attempts.
fn cap(n: usize) -> u64 {
    (BASE_MS << n.min(16)).min(CAP_MS)
}

/// Reads a device's events in order, checking each against what the contract says
/// comes next, and collects its waits for the timing check.
struct Reader<'a> {
    name: &'a str,
    events: Vec<Event>,
    at: usize,
    /// `/servers` answers read so far: the index of the next request.
    answers: usize,
    /// Each wait: milliseconds before scaling, the request that ended it, and the
    /// instant it started at when known here (else it is the request before).
    waits: Vec<(u64, usize, Option<Instant>)>,
}

impl<'a> Reader<'a> {
    fn new(name: &'a str) -> Reader<'a> {
        Reader {
            name,
            events: Vec::new(),
            at: 0,
            answers: 0,
            waits: Vec::new(),
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: event #{}: expected {what}; events: {:#?}",
            self.name, self.at, self.events
        );
    }

    /// The next event (lines that are none are passed).
    fn next(&mut self, what: &str) -> Event {
        self.skip_others();
        let Some(event) = self.events.get(self.at).cloned() else {
            self.fail(what)
        };
        self.at += 1;
        if matches!(event, Event::Servers(_)) {
            self.answers += 1;
        }
        event
    }

    fn skip_others(&mut self) {
        while let Some(Event::Other(line)) = self.events.get(self.at) {
            // The scripted registry always answers: a device must not say otherwise.
            if line.contains("unreachable") || line.contains("no servers") {
                self.fail("no word of a failed /servers");
            }
            self.at += 1;
        }
    }

    fn expect(&mut self, want: Event) {
        self.skip_others();
        if self.events.get(self.at) != Some(&want) {
            self.fail(&format!("{want:?}"));
        }
        self.next("");
    }

    /// Passes the echoes of a connection.
    fn echoes(&mut self) -> usize {
        let mut n = 0;
        self.skip_others();
        while self.events.get(self.at) == Some(&Event::Echo) {
            self.next("");
            self.skip_others();
            n += 1;
        }
        n
    }

    /// One attempt of the contract: each pick the first server of a fresh answer not
    /// tried yet in this attempt, up to the first answer's length. The picks, and
    /// whether the last one connected.
    fn attempt(&mut self) -> (Vec<String>, bool) {
        let mut picks: Vec<String> = Vec::new();
        let mut limit = None;
        loop {
            let Event::Servers(list) = self.next("an answer") else {
                self.at -= 1;
                self.fail("an answer to /servers")
            };
            let limit = *limit.get_or_insert(list.len());
            let Some(pick) = list.iter().find(|s| !picks.contains(s)).cloned() else {
                return (picks, false); // nothing left to try in this answer
            };
            match self.next("a connect") {
                Event::Refused(address) if address == pick => picks.push(address),
                Event::Connected(address) if address == pick => {
                    picks.push(address);
                    return (picks, true);
                }
                _ => {
                    self.at -= 1;
                    self.fail(&format!(
                        "a connect to {pick}, the first not tried of {list:?}"
                    ))
                }
            }
            if picks.len() == limit {
                return (picks, false);
            }
        }
    }

    /// An attempt in which every server of `list` is refused.
    fn failed(&mut self, list: &[&str]) {
        let start = self.at;
        let (picks, connected) = self.attempt();
        if connected || picks != list {
            self.at = start;
            self.fail(&format!("an attempt refused by each of {list:?}"));
        }
    }

    /// A backoff wait after the `n`-th failed attempt in a row (0-based).
    fn backoff(&mut self, n: usize) -> u64 {
        match self.next("a backoff") {
            Event::Backoff(wait, c) if c == cap(n) && wait < c => {
                self.waits.push((wait, self.answers, None));
                wait
            }
            _ => {
                self.at -= 1;
                self.fail(&format!(
                    "a backoff below {} ms (failure {n} in a row)",
                    cap(n)
                ))
            }
        }
    }

    /// The connection lost (at `killed`), and a wait below the answers' jitter.
    fn lost(&mut self, killed: Instant) {
        self.expect(Event::Lost);
        match self.next("a jitter wait") {
            Event::Jitter(wait) if wait < JITTER_MS => {
                self.waits.push((wait, self.answers, Some(killed)));
            }
            _ => {
                self.at -= 1;
                self.fail(&format!("a jitter wait below {JITTER_MS} ms"))
            }
        }
    }

    /// Failed attempts and backoffs at the cap, until an attempt connects to `live`.
    fn until_connected(&mut self, live: &str) {
        for _ in 0..100 {
            let start = self.at;
            match self.attempt() {
                (picks, true) if picks.last().map(String::as_str) == Some(live) => return,
                (_, false) => {
                    self.backoff(usize::MAX);
                }
                _ => {
                    self.at = start;
                    self.fail(&format!("attempts until one connects to {live}"))
                }
            }
        }
        self.fail(&format!(
            "at most 100 attempts until one connects to {live}"
        ))
    }

    /// Each wait against the registry's clock: the time from its start (the kill, or
    /// the request before) to the request after it is at least the wait, scaled, and at
    /// most that plus [`SLACK`].
    fn check_waits(&self, asked: &[Instant]) {
        for &(wait, request, since) in &self.waits {
            let since = since.unwrap_or_else(|| asked[request - 1]);
            let took = asked[request].duration_since(since);
            let scaled = Duration::from_millis(wait) / SCALE;
            assert!(
                took + EARLY >= scaled,
                "{}: waited {took:?} before request #{request}, less than {wait} ms / {SCALE}",
                self.name
            );
            assert!(
                took <= scaled + SLACK,
                "{}: waited {took:?} before request #{request}, for {wait} ms / {SCALE}",
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The storm
// ---------------------------------------------------------------------------------------

/// Runs the device `command` makes (pointed at an [`Env`]) through the three phases of
/// the module's documentation.
fn storm(name: &str, command: impl FnOnce(&Env) -> Command) {
    let registry = Registry::start();
    let env = Env {
        registry: registry.addr,
        forwarder: dead_port(),
    };
    let (a, b) = (dead_port(), dead_port());
    let (a, b) = (a.as_str(), b.as_str());
    let mut reader = Reader::new(name);

    // 1. Resolve. Walking the first list would take `live` after `a` without asking
    // again; the second server of the second answer is `b`, tried by then; the first
    // not tried of the third answer is `live`.
    let mut live = Echo::start();
    let first = live.addr.clone();
    let first = first.as_str();
    registry.script(&[&[a, first, b], &[a, b, first], &[first, a, b]]);
    let mut cmd = command(&env);
    cmd.env("SWITCHBOARD_TIME_SCALE", SCALE.to_string());
    let mut device = Proc::spawn(name, &mut cmd, PATIENCE);
    device.wait_count("echo ok", 1);
    reader.events = events(&mut device);
    for (list, dead) in [([a, first, b], a), ([a, b, first], b)] {
        reader.expect(Event::Servers(list.map(str::to_owned).to_vec()));
        reader.expect(Event::Refused(dead.to_owned()));
    }
    reader.expect(Event::Servers(vec![first.into(), a.into(), b.into()]));
    reader.expect(Event::Connected(first.to_owned()));
    reader.echoes();
    assert_eq!(registry.asked().len(), 3, "{name}: one request per pick");

    // 2. The server dies: a jitter, then failed attempts with growing caps.
    let dead = [a, b, first];
    registry.script(&[&dead]);
    let (killed, _) = live.kill();
    device.wait_count("backing off ", BACKOFFS);
    reader.events = events(&mut device);
    reader.echoes();
    reader.lost(killed);
    let mut waits = Vec::new();
    for n in 0..BACKOFFS {
        reader.failed(&dead);
        waits.push(reader.backoff(n));
    }
    // The caps grow in what the device does, not only in what it prints: the later
    // waits are not all below the first cap (all are, by chance, less than once in 10^8).
    assert!(
        waits[3..].iter().any(|&w| w >= BASE_MS),
        "{name}: every wait below {BASE_MS} ms: {waits:?}"
    );

    // 3. A short connection keeps the count of failures (the cap stays at 120 s)...
    let mut short = Echo::start();
    let brief = short.addr.clone();
    registry.script(&[&[brief.as_str(), a, b]]);
    device.wait_count(&format!("connected to {brief}"), 1);
    let shorter = [a, b, brief.as_str()];
    registry.script(&[&shorter]);
    let backoffs = device.count("backing off ");
    let (killed, accepted) = short.kill();
    let lasted = killed.duration_since(accepted.expect("the device's connection"));
    assert!(
        lasted < Duration::from_millis(RESET_AFTER_MS) / SCALE,
        "{name}: the short connection lasted {lasted:?} (a stalled machine?)"
    );
    device.wait_count("backing off ", backoffs + 1);
    reader.events = events(&mut device);
    reader.until_connected(&brief);
    reader.echoes();
    reader.lost(killed);
    reader.failed(&shorter);
    reader.backoff(BACKOFFS);

    // ... and one that lasted 60 s (scaled) resets it (the cap is 1 s again).
    let mut long = Echo::start();
    let longer = long.addr.clone();
    registry.script(&[&[longer.as_str(), a, b]]);
    // Two echoes, a ping interval (1 s) apart: longer than 60 s / SCALE.
    let connected = format!("connected to {longer}");
    device.wait(&format!("two echoes on {longer}"), |seen| {
        seen.iter()
            .position(|l| l.contains(&connected))
            .is_some_and(|at| count(&seen[at..], "echo ok") >= 2)
    });
    let longest = [a, b, longer.as_str()];
    registry.script(&[&longest]);
    let backoffs = device.count("backing off ");
    let (killed, _) = long.kill();
    device.wait_count("backing off ", backoffs + 2);
    reader.events = events(&mut device);
    reader.until_connected(&longer);
    if reader.echoes() < 2 {
        reader.fail("two echoes");
    }
    reader.lost(killed);
    reader.failed(&longest);
    reader.backoff(0);
    reader.failed(&longest);
    reader.backoff(1);

    let asked = registry.wait_asked(reader.answers + 1);
    reader.check_waits(&asked);
    let targets = registry.targets();
    assert!(
        targets.iter().all(|t| t == "/servers?service=default"),
        "{name}: requests {targets:?}"
    );
}

/// Where a device under test is pointed.
struct Env {
    registry: SocketAddr,
    /// A dead port: the scripted registry always answers, so it is never used.
    forwarder: String,
}

impl Env {
    /// `program args...` with the environment the examples read (the scale is added by
    /// [`storm`]).
    fn command(&self, program: &str, args: &[&Path]) -> Command {
        let registry = format!("http://{}", self.registry);
        example_command(program, args, &registry, &self.forwarder)
    }
}

// ---------------------------------------------------------------------------------------
// One test per language
// ---------------------------------------------------------------------------------------

#[test]
fn python_device_keeps_the_reconnect_contract() {
    if !tools::tools_ready("python_device_storm", &["python3"], &[]) {
        return;
    }
    let script = examples().join("python").join("device.py");
    storm("python device", |env| env.command("python3", &[&script]));
}

#[test]
fn node_device_keeps_the_reconnect_contract() {
    if !tools::tools_ready("node_device_storm", &["node"], &[]) {
        return;
    }
    let script = examples().join("node").join("device.js");
    storm("node device", |env| env.command("node", &[&script]));
}

#[test]
fn java_device_keeps_the_reconnect_contract() {
    if !tools::tools_ready("java_device_storm", &["java", "javac"], &[]) {
        return;
    }
    let (classes, javac) = sdk::javac("sdk-storm-java", &[], &["Device.java"]);
    sdk::assert_clean("javac", &javac);
    storm("java device", |env| {
        let mut cmd = env.command("java", &[]);
        cmd.arg("-cp").arg(&classes).arg("Device");
        cmd
    });
}

/// The C device reads the plain-text answer (`Accept: text/plain`) and its
/// `X-Reconnect-Jitter-Ms` header; it takes the registry and forwarder as arguments.
#[test]
fn c_device_keeps_the_reconnect_contract() {
    if !tools::tools_ready("c_device_storm", &["gcc"], &[]) {
        return;
    }
    let binary = sdk::c_device("sdk-storm-c-device");
    storm("C device", |env| {
        let mut cmd = env.command(binary.to_str().expect("a UTF-8 path"), &[]);
        cmd.arg(env.registry.to_string())
            .arg(&env.forwarder)
            .arg("default");
        cmd
    });
}

/// The shell device: curl with `Accept: text/plain` (its `X-Reconnect-Jitter-Ms` read
/// from the headers), bash's `/dev/tcp`, `sleep` with fractions of a second.
#[test]
fn shell_device_keeps_the_reconnect_contract() {
    if !tools::tools_ready(
        "shell_device_storm",
        &["bash", "curl", "timeout", "sleep"],
        &[],
    ) {
        return;
    }
    let script = examples().join("shell").join("device.sh");
    storm("shell device", |env| env.command("bash", &[&script]));
}
