//! Registry benchmark: switchboard against r-nacos, same workload, one run, loopback only.
//!
//! Run from the repository root:
//!
//! ```text
//! SB_BENCH_SECS=10 cargo bench --bench registry
//! ```
//!
//! For each size N (default 1,000 and 10,000 instances in one service `bench`), each
//! system gets a fresh server process and, after registering N instances:
//!
//! - (a) the ranked list: switchboard `GET /servers?service=bench`, r-nacos
//!   `GET /nacos/v1/ns/instance/list?serviceName=bench&healthyOnly=true` (r-nacos has no
//!   "top 5" query: its answer carries all N instances, switchboard's 5);
//! - (b) heartbeats cycling over all N instances: switchboard
//!   `PUT /v1/services/bench/instances/{id}/heartbeat` with `X-Lease`, r-nacos v1
//!   `PUT /nacos/v1/ns/instance/beat?serviceName=bench&beat=<json>`;
//! - (c) the full listing: switchboard `GET /v1/services/bench/instances`, r-nacos the
//!   instance list with `healthyOnly=false`;
//! - (d) server CPU per request, read as utime+stime of the server PID from
//!   `/proc/PID/stat` before and after each phase, and server RSS per instance
//!   (`VmRSS` after registering N minus `VmRSS` of the idle empty server, over N).
//!
//! The registration of the N instances is a phase too: `SB_BENCH_REGISTER_CONNS`
//! clients (default 64) register concurrently, each waiting for its answer, so a store
//! that commits concurrent writes together (switchboard's group commit, durable on
//! SQLite with `synchronous = FULL`) can; r-nacos keeps them in memory (not durable).
//!
//! Load generator: a minimal hand-written HTTP/1.1 keep-alive client over tokio
//! `TcpStream`, on one client thread by default, rather than reqwest. The bench machine
//! has 2 cores, so the client competes with the server; reqwest/hyper's per-request
//! work (connection pool, header maps, body streams) would take a large share of the
//! box. Server CPU per request is read for the server PID alone, so it does not depend
//! on the client; requests/s and latency do.
//!
//! Knobs (environment): `SB_BENCH_SECS` (seconds per phase, default 10),
//! `SB_BENCH_SIZES` (default `1000,10000`), `SB_BENCH_CONNS` (default 32),
//! `SB_BENCH_REGISTER_CONNS` (concurrent registering clients, default 64),
//! `SB_BENCH_LIST_CONNS` (connections for the full listing, default 4),
//! `SB_BENCH_CLIENT_THREADS` (default 1), `RNACOS_BIN` (path of the r-nacos binary),
//! `SB_BENCH_SKIP_RNACOS=1`, `SB_BENCH_INSTALL_RNACOS=1` (run
//! `cargo install rnacos --locked` when the binary is missing).
//!
//! Nothing here asserts wall-clock numbers: the targets are printed, met or missed.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use support::http::{self, Conn, JSON};
use support::procs::{self, LogInfo, Server};
use support::report::{Tally, fmt_num, fmt_ratio, join, nanos};
use support::{knobs, rnacos, sample};

/// Service every instance is registered in.
const SERVICE: &str = "bench";
/// TTL asked for each switchboard instance (the largest the API accepts), so no
/// instance expires during a run; r-nacos gets the same health timeout.
const TTL_SECS: u64 = 300;
/// Longest wait for one request (connect, or write plus the full answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on requests per connection in one phase.
const MAX_REQUESTS_PER_CONN: u64 = 20_000_000;
/// Upper bound on latency samples kept per connection.
const MAX_SAMPLES_PER_CONN: usize = 4_000_000;
/// Longest registration of all N instances.
const REGISTER_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for a server to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Quiet time after each phase that still counts toward its server CPU, so deferred
/// work is charged to the phase that caused it (switchboard writes heartbeats to its
/// store in a batch every second).
const SETTLE: Duration = Duration::from_millis(1500);
/// Lines of server warnings/errors kept for the report.
const MAX_LOG_LINES: usize = 8;

fn main() {
    if !knobs::asked_for("registry") {
        return;
    }
    let cfg = BenchConfig::from_env();
    knobs::block_on("registry", cfg.client_threads, run(cfg));
}

/// Settings from the environment.
#[derive(Debug, Clone)]
struct BenchConfig {
    phase: Duration,
    sizes: Vec<usize>,
    conns: usize,
    register_conns: usize,
    list_conns: usize,
    client_threads: usize,
}

impl BenchConfig {
    fn from_env() -> Self {
        BenchConfig {
            phase: Duration::from_secs(knobs::num("SB_BENCH_SECS", 10, 1, 600)),
            sizes: knobs::sizes("SB_BENCH_SIZES", &[1_000, 10_000], 1_000_000),
            conns: knobs::count("SB_BENCH_CONNS", 32, 1, 1024),
            register_conns: knobs::count("SB_BENCH_REGISTER_CONNS", 64, 1, 1024),
            list_conns: knobs::count("SB_BENCH_LIST_CONNS", 4, 1, 1024),
            client_threads: knobs::count("SB_BENCH_CLIENT_THREADS", 1, 1, 64),
        }
    }
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Switchboard,
    RNacos,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::RNacos => "r-nacos",
        }
    }
}

/// Everything measured for one system at one size.
#[derive(Debug)]
struct SystemRun {
    register: PhaseResult,
    rss_idle_kib: u64,
    rss_loaded_kib: u64,
    registered: usize,
    listed_before: Option<usize>,
    listed_after: Option<usize>,
    servers: PhaseResult,
    beats: PhaseResult,
    listing: PhaseResult,
    stop_note: String,
    log: LogInfo,
}

impl SystemRun {
    fn rss_per_instance_kib(&self, n: usize) -> f64 {
        (self.rss_loaded_kib as f64 - self.rss_idle_kib as f64) / n as f64
    }

    /// The largest of `f` over the three measured phases.
    fn phase_max(&self, f: fn(&PhaseResult) -> f64) -> f64 {
        let phases = [&self.servers, &self.beats, &self.listing];
        phases.into_iter().map(f).fold(0.0, f64::max)
    }
}

async fn run(cfg: BenchConfig) -> anyhow::Result<()> {
    let clk_tck = sample::clock_ticks();
    let sb_bin = PathBuf::from(env!("CARGO_BIN_EXE_switchboard"));
    let rnacos = if knobs::flag("SB_BENCH_SKIP_RNACOS") {
        println!("r-nacos: skipped (SB_BENCH_SKIP_RNACOS is set); its column stays empty");
        None
    } else {
        rnacos::find_or_install()
    };
    let rnacos_version = rnacos.as_deref().map(rnacos::version);

    println!("registry bench: loopback only (127.0.0.1)");
    println!("  switchboard binary: {}", sb_bin.display());
    match (&rnacos, &rnacos_version) {
        (Some(bin), Some(v)) => println!("  r-nacos binary:     {} ({v})", bin.display()),
        _ => println!("  r-nacos binary:     none (column skipped)"),
    }
    println!(
        "  phase {} s, {} connections ({} for the full listing), {} client thread(s), CLK_TCK {clk_tck}",
        cfg.phase.as_secs(),
        cfg.conns,
        cfg.list_conns,
        cfg.client_threads
    );

    let mut results: Vec<(usize, SystemRun, Option<SystemRun>)> = Vec::new();
    for &n in &cfg.sizes {
        println!("\n== N = {n} ==");
        let sb = run_system(Kind::Switchboard, &sb_bin, n, &cfg, clk_tck)
            .await
            .with_context(|| format!("switchboard at N = {n}"))?;
        let rn = match &rnacos {
            Some(bin) => match run_system(Kind::RNacos, bin, n, &cfg, clk_tck).await {
                Ok(r) => Some(r),
                Err(err) => {
                    println!("r-nacos at N = {n}: failed, column skipped: {err:#}");
                    None
                }
            },
            None => None,
        };
        results.push((n, sb, rn));
    }

    print_report(&cfg, clk_tck, rnacos_version.as_deref(), &results);
    Ok(())
}

async fn run_system(
    kind: Kind,
    bin: &Path,
    n: usize,
    cfg: &BenchConfig,
    clk_tck: u64,
) -> anyhow::Result<SystemRun> {
    let mut server = match kind {
        Kind::Switchboard => start_switchboard(bin)?,
        Kind::RNacos => start_rnacos(bin)?,
    };
    let addr = server.addr;
    let pid = server.pid;
    let work = Workload::new(kind, addr, n);
    http::wait_ready(addr, &work.listing, Duration::from_millis(100)).await?;
    println!(
        "{}: pid {pid} listening on {addr}, data in {}",
        kind.name(),
        server.dir.path().display()
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = sample::rss_kib(pid)?;

    // Register N instances; the server CPU counted includes a settle second after.
    let cpu_before = sample::cpu_ticks(pid)?;
    let (leases, mut register) =
        register_all(kind, addr, cfg.register_conns, Arc::clone(&work.register))
            .await
            .context("registering")?;
    let registered = leases.iter().filter(|l| l.is_some()).count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    register.cpu_ticks = sample::cpu_ticks(pid)?.saturating_sub(cpu_before);
    register.clk_tck = clk_tck;
    let rss_loaded_kib = sample::rss_kib(pid)?;
    let listed_before = count_listed(kind, addr, &work.listing).await;
    println!(
        "{}: registered {registered}/{n} in {:.2} s ({:.0}/s, {} clients, server CPU {:.1} µs each); listing shows {}; RSS idle {} KiB, loaded {} KiB",
        kind.name(),
        register.elapsed.as_secs_f64(),
        register.rps(),
        cfg.register_conns,
        register.cpu_us_per_req().unwrap_or(f64::NAN),
        fmt_opt_count(listed_before),
        rss_idle_kib,
        rss_loaded_kib
    );
    if registered == 0 {
        bail!(
            "no instance registered; first error: {:?}",
            register.tally.first_error
        );
    }
    server.check_alive()?;

    // (a) ranked list, (b) heartbeats cycling over every registered instance, (c) full
    // listing.
    let fixed = |req: &Vec<u8>| -> Arc<MakeRequest> {
        let req = req.clone();
        Arc::new(move |_seq: u64, out: &mut Vec<u8>| out.extend_from_slice(&req))
    };
    let beat = HeartbeatBuilder::new(kind, addr, &work.addresses, &leases);
    let beat: Arc<MakeRequest> = Arc::new(move |seq: u64, out: &mut Vec<u8>| beat.build(seq, out));
    let mut phases = Vec::with_capacity(3);
    for (name, conns, make) in [
        ("servers", cfg.conns, fixed(&work.servers)),
        ("heartbeat", cfg.conns, beat),
        ("listing", cfg.list_conns, fixed(&work.listing)),
    ] {
        let result = run_phase(pid, clk_tck, addr, conns, cfg.phase, make).await?;
        print_phase(kind, name, &result);
        server.check_alive()?;
        phases.push(result);
    }
    let [servers, beats, listing] =
        <[PhaseResult; 3]>::try_from(phases).map_err(|_| anyhow::anyhow!("three phases"))?;

    let listed_after = count_listed(kind, addr, &work.listing).await;
    let stop_note = server.stop(STOP_TIMEOUT);
    println!(
        "{}: listing shows {} at the end; {stop_note}",
        kind.name(),
        fmt_opt_count(listed_after)
    );
    Ok(SystemRun {
        register,
        rss_idle_kib,
        rss_loaded_kib,
        registered,
        listed_before,
        listed_after,
        servers,
        beats,
        listing,
        stop_note,
        log: server.log_info(MAX_LOG_LINES),
    })
}

// ---------------------------------------------------------------------------------
// Workload: request bytes for each system
// ---------------------------------------------------------------------------------

struct Workload {
    addresses: Vec<(String, u16)>,
    register: Arc<Vec<Vec<u8>>>,
    servers: Vec<u8>,
    listing: Vec<u8>,
}

impl Workload {
    fn new(kind: Kind, addr: SocketAddr, n: usize) -> Self {
        let addresses: Vec<(String, u16)> = (0..n)
            .map(|i| (http::instance_ip(i), http::INSTANCE_PORT))
            .collect();
        let get = |path: String| http::request("GET", &path, addr, &[], b"");
        let register = addresses
            .iter()
            .map(|(ip, port)| match kind {
                Kind::Switchboard => {
                    let body = format!(r#"{{"address":"{ip}:{port}","ttl_secs":{TTL_SECS}}}"#);
                    let path = format!("/v1/services/{SERVICE}/instances");
                    http::request("POST", &path, addr, &[JSON], body.as_bytes())
                }
                Kind::RNacos => {
                    let path = format!(
                        "/nacos/v1/ns/instance?serviceName={SERVICE}&ip={ip}&port={port}&ephemeral=true"
                    );
                    http::request("POST", &path, addr, &[], b"")
                }
            })
            .collect();
        let list = "/nacos/v1/ns/instance/list";
        let (servers, listing) = match kind {
            Kind::Switchboard => (
                get(format!("/servers?service={SERVICE}")),
                get(format!("/v1/services/{SERVICE}/instances")),
            ),
            Kind::RNacos => (
                get(format!("{list}?serviceName={SERVICE}&healthyOnly=true")),
                get(format!("{list}?serviceName={SERVICE}&healthyOnly=false")),
            ),
        };
        Workload {
            addresses,
            register: Arc::new(register),
            servers,
            listing,
        }
    }
}

/// Builds heartbeat requests; `seq` picks the instance (round robin over all).
enum HeartbeatBuilder {
    /// Per instance: request line and headers up to (not including) Content-Length.
    Switchboard(Vec<Vec<u8>>),
    /// Per instance: the whole request.
    RNacos(Vec<Vec<u8>>),
}

impl HeartbeatBuilder {
    fn new(
        kind: Kind,
        addr: SocketAddr,
        addresses: &[(String, u16)],
        leases: &[Option<(String, String)>],
    ) -> Self {
        match kind {
            Kind::Switchboard => HeartbeatBuilder::Switchboard(
                leases
                    .iter()
                    .flatten()
                    .map(|(id, lease)| {
                        format!(
                            "PUT /v1/services/{SERVICE}/instances/{id}/heartbeat HTTP/1.1\r\n\
                             Host: {addr}\r\nX-Lease: {lease}\r\nContent-Type: application/json\r\n"
                        )
                        .into_bytes()
                    })
                    .collect(),
            ),
            Kind::RNacos => HeartbeatBuilder::RNacos(
                addresses
                    .iter()
                    .zip(leases)
                    .filter(|(_, l)| l.is_some())
                    .map(|((ip, port), _)| {
                        let beat = format!(
                            r#"{{"serviceName":"{SERVICE}","ip":"{ip}","port":{port},"cluster":"DEFAULT"}}"#
                        );
                        let path = format!(
                            "/nacos/v1/ns/instance/beat?serviceName={SERVICE}&beat={}",
                            http::percent_encode(&beat)
                        );
                        http::request("PUT", &path, addr, &[], b"")
                    })
                    .collect(),
            ),
        }
    }

    fn build(&self, seq: u64, out: &mut Vec<u8>) {
        match self {
            HeartbeatBuilder::Switchboard(prefixes) => {
                let n = prefixes.len() as u64;
                let i = seq % n;
                let round = seq / n;
                // A connection count that moves every round and differs per instance.
                let k = (i * 31 + round * 17) % 2000;
                let body = format!(r#"{{"connections":{k}}}"#);
                out.extend_from_slice(&prefixes[i as usize]);
                let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
            }
            HeartbeatBuilder::RNacos(reqs) => {
                let i = (seq % reqs.len() as u64) as usize;
                out.extend_from_slice(&reqs[i]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------

/// Counts of one phase, merged over its connections.
#[derive(Debug, Default, Clone)]
struct PhaseResult {
    /// 2xx answers count as ok; latencies in nanoseconds (sorted after merge).
    tally: Tally,
    elapsed: Duration,
    /// The CPU reading window: the phase plus [`SETTLE`].
    cpu_window: Duration,
    /// Server CPU (utime + stime) ticks over the phase.
    cpu_ticks: u64,
    /// This load generator's own CPU ticks over the phase.
    client_ticks: u64,
    /// Process ticks of the whole machine (user, nice, system, steal over all cores)
    /// minus server and client: other processes competing during the phase.
    other_ticks: u64,
    /// irq + softirq ticks of the whole machine (mostly the loopback network stack;
    /// not charged to any process).
    irq_ticks: u64,
    clk_tck: u64,
}

impl PhaseResult {
    fn note_answer(&mut self, status: u16, latency: Duration) {
        let ok = (200..300).contains(&status);
        let latency = nanos(latency);
        self.tally
            .note_answer(status, ok, latency, MAX_SAMPLES_PER_CONN);
    }

    /// 2xx answers per second.
    fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.tally.ok as f64 / secs
        } else {
            0.0
        }
    }

    fn percentile_us(&self, p: usize) -> Option<f64> {
        let lat = &self.tally.latencies;
        if lat.is_empty() {
            return None;
        }
        let idx = (lat.len() * p / 100).min(lat.len() - 1);
        Some(lat[idx] as f64 / 1_000.0)
    }

    /// Server CPU per answered request, in microseconds.
    fn cpu_us_per_req(&self) -> Option<f64> {
        self.per_req_us(self.cpu_ticks)
    }

    /// Load generator CPU per answered request, in microseconds.
    fn client_us_per_req(&self) -> Option<f64> {
        self.per_req_us(self.client_ticks)
    }

    fn per_req_us(&self, ticks: u64) -> Option<f64> {
        if self.tally.answered == 0 || self.clk_tck == 0 {
            return None;
        }
        Some(ticks as f64 * 1e6 / self.clk_tck as f64 / self.tally.answered as f64)
    }

    /// CPU used by other processes during the phase, in % of one core.
    fn other_core_pct(&self) -> f64 {
        self.core_pct(self.other_ticks)
    }

    /// irq + softirq time during the phase, in % of one core.
    fn irq_core_pct(&self) -> f64 {
        self.core_pct(self.irq_ticks)
    }

    fn core_pct(&self, ticks: u64) -> f64 {
        let secs = self.cpu_window.as_secs_f64();
        if secs <= 0.0 || self.clk_tck == 0 {
            return 0.0;
        }
        ticks as f64 / self.clk_tck as f64 / secs * 100.0
    }
}

type MakeRequest = dyn Fn(u64, &mut Vec<u8>) + Send + Sync;

/// Runs `conns` keep-alive connections for `duration`, each sending requests built by
/// `make` back to back; reads the server's CPU before and after.
async fn run_phase(
    pid: u32,
    clk_tck: u64,
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    make: Arc<MakeRequest>,
) -> anyhow::Result<PhaseResult> {
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = sample::cpu_ticks(pid)?;
    let client_before = sample::cpu_ticks(std::process::id())?;
    let busy_before = sample::machine()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let next = Arc::clone(&next);
        let make = Arc::clone(&make);
        tasks.push(tokio::spawn(phase_worker(addr, deadline, next, make)));
    }
    let mut result = PhaseResult::default();
    for task in tasks {
        match task.await {
            Ok(part) => result.tally.merge(part.tally),
            Err(err) => result
                .tally
                .note_error(format!("worker task failed: {err}")),
        }
    }
    result.elapsed = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    result.cpu_window = started.elapsed();
    let cpu_after = sample::cpu_ticks(pid)?;
    let client_after = sample::cpu_ticks(std::process::id())?;
    let busy_after = sample::machine()?;
    result.cpu_ticks = cpu_after.saturating_sub(cpu_before);
    result.client_ticks = client_after.saturating_sub(client_before);
    result.other_ticks = busy_after
        .procs
        .saturating_sub(busy_before.procs)
        .saturating_sub(result.cpu_ticks)
        .saturating_sub(result.client_ticks);
    result.irq_ticks = busy_after.irq.saturating_sub(busy_before.irq);
    result.clk_tck = clk_tck;
    result.tally.latencies.sort_unstable();
    Ok(result)
}

/// Connects `conn` when it is `None`; false (the error noted) when that failed.
async fn connect(conn: &mut Option<Conn>, addr: SocketAddr, stats: &mut PhaseResult) -> bool {
    if conn.is_some() {
        return true;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, Conn::connect(addr)).await {
        Ok(Ok(c)) => *conn = Some(c),
        Ok(Err(err)) => stats.tally.note_error(format!("connect: {err}")),
        Err(_) => stats.tally.note_error("connect: timed out"),
    }
    conn.is_some()
}

async fn phase_worker(
    addr: SocketAddr,
    deadline: Instant,
    next: Arc<AtomicU64>,
    make: Arc<MakeRequest>,
) -> PhaseResult {
    let mut stats = PhaseResult::default();
    let mut conn: Option<Conn> = None;
    let mut req = Vec::with_capacity(1024);
    for _ in 0..MAX_REQUESTS_PER_CONN {
        if Instant::now() >= deadline {
            break;
        }
        if !connect(&mut conn, addr, &mut stats).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let seq = next.fetch_add(1, Ordering::Relaxed);
        req.clear();
        make(seq, &mut req);
        let t0 = Instant::now();
        match http::call(&mut conn, addr, &req, false, REQUEST_TIMEOUT).await {
            Ok(answer) => stats.note_answer(answer.status, t0.elapsed()),
            Err(err) => stats.tally.note_error(err),
        }
    }
    stats
}

/// Registers every instance over `conns` connections. Answers, per instance index,
/// switchboard's `(id, lease)` (r-nacos: empty strings) when registered.
async fn register_all(
    kind: Kind,
    addr: SocketAddr,
    conns: usize,
    reqs: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<(Vec<Option<(String, String)>>, PhaseResult)> {
    let n = reqs.len();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + REGISTER_DEADLINE;
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns.min(n) {
        let next = Arc::clone(&next);
        let reqs = Arc::clone(&reqs);
        tasks.push(tokio::spawn(async move {
            let mut stats = PhaseResult::default();
            let mut got: Vec<(usize, (String, String))> = Vec::new();
            let mut conn: Option<Conn> = None;
            // Each index is taken once; a failed registration is counted, not retried.
            for _ in 0..reqs.len() {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= reqs.len() || Instant::now() >= deadline {
                    break;
                }
                if !connect(&mut conn, addr, &mut stats).await {
                    continue;
                }
                let t0 = Instant::now();
                match http::call(&mut conn, addr, &reqs[i], true, REQUEST_TIMEOUT).await {
                    Ok(answer) => {
                        stats.note_answer(answer.status, t0.elapsed());
                        if (200..300).contains(&answer.status) {
                            match parse_registration(kind, &answer.body) {
                                Ok(lease) => got.push((i, lease)),
                                Err(err) => stats.tally.note_error(err),
                            }
                        }
                    }
                    Err(err) => stats.tally.note_error(err),
                }
            }
            (stats, got)
        }));
    }
    let mut stats = PhaseResult::default();
    let mut leases = vec![None; n];
    for task in tasks {
        let (part, got) = task.await.context("registration worker")?;
        stats.tally.merge(part.tally);
        for (i, lease) in got {
            leases[i] = Some(lease);
        }
    }
    stats.elapsed = started.elapsed();
    stats.tally.latencies.sort_unstable();
    Ok((leases, stats))
}

fn parse_registration(kind: Kind, body: &[u8]) -> Result<(String, String), String> {
    match kind {
        Kind::Switchboard => http::parse_registration(body),
        Kind::RNacos if body == b"ok" => Ok((String::new(), String::new())),
        Kind::RNacos => Err(format!(
            "r-nacos registration answer: {}",
            String::from_utf8_lossy(body)
        )),
    }
}

/// How many instances the full listing shows right now.
async fn count_listed(kind: Kind, addr: SocketAddr, listing: &[u8]) -> Option<usize> {
    let answer = http::one_shot(addr, listing, REQUEST_TIMEOUT).await.ok()?;
    if answer.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    let key = match kind {
        Kind::Switchboard => "instances",
        Kind::RNacos => "hosts",
    };
    v.get(key).and_then(|a| a.as_array()).map(Vec::len)
}

// ---------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------

fn start_switchboard(bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = format!("sqlite://{}/bench.db", dir.path().display());
    let args = ["--db", &db, "--no-forward"];
    let (server, _) =
        procs::start_switchboard(Command::new(bin), dir, &args, &[], http::START_TIMEOUT)?;
    Ok(server)
}

fn start_rnacos(bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let data = dir.path().join("nacos_db");
    let mut ports = Vec::new();
    for _ in 0..50 {
        let p = procs::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
        if ports.len() == 3 {
            break;
        }
    }
    let [http, grpc, console] = ports[..] else {
        bail!("could not find three free ports");
    };
    let out = std::fs::File::create(dir.path().join("rnacos.stdout.log"))?;
    let mut cmd = Command::new(bin);
    // r-nacos reads `.env` from its working directory: the empty temp dir.
    cmd.env("RNACOS_HTTP_PORT", http.to_string())
        .env("RNACOS_GRPC_PORT", grpc.to_string())
        .env("RNACOS_HTTP_CONSOLE_PORT", console.to_string())
        .env("RNACOS_SDK_HOST", "127.0.0.1")
        .env("RNACOS_CONSOLE_HOST", "127.0.0.1")
        .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc}"))
        .env("RNACOS_DATA_DIR", &data)
        .env("RNACOS_CONFIG_DB_DIR", &data)
        // Same liveness window as switchboard's ttl_secs, so nothing expires mid-run.
        .env("RNACOS_NAMING_HEALTH_TIMEOUT_SECOND", TTL_SECS.to_string())
        .env(
            "RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND",
            (3 * TTL_SECS).to_string(),
        )
        // No per-request access log (switchboard logs none at its default level).
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out));
    let mut server = Server::spawn("r-nacos", cmd, dir, false)?;
    server.addr = SocketAddr::from(([127, 0, 0, 1], http));
    Ok(server)
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------
fn fmt_opt_count(n: Option<usize>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn print_phase(kind: Kind, phase: &str, r: &PhaseResult) {
    println!(
        "{}: {phase:<9} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  server CPU {:>7.1} µs/req  \
         (client {:.1} µs/req; other processes {:.0}%, irq+softirq {:.0}% of a core; {} answered, {} non-2xx, {} errors)",
        kind.name(),
        r.rps(),
        r.percentile_us(50).unwrap_or(f64::NAN),
        r.percentile_us(99).unwrap_or(f64::NAN),
        r.cpu_us_per_req().unwrap_or(f64::NAN),
        r.client_us_per_req().unwrap_or(f64::NAN),
        r.other_core_pct(),
        r.irq_core_pct(),
        r.tally.answered,
        r.tally.non_ok(),
        r.tally.errors
    );
}

type Metric = (&'static str, fn(&SystemRun, usize) -> Option<f64>);

const METRICS: &[Metric] = &[
    ("register rps", |r, _| Some(r.register.rps())),
    ("register p99 µs", |r, _| r.register.percentile_us(99)),
    ("register µs CPU/req", |r, _| r.register.cpu_us_per_req()),
    ("servers rps", |r, _| Some(r.servers.rps())),
    ("servers p50 µs", |r, _| r.servers.percentile_us(50)),
    ("servers p99 µs", |r, _| r.servers.percentile_us(99)),
    ("servers µs CPU/req", |r, _| r.servers.cpu_us_per_req()),
    ("heartbeat rps", |r, _| Some(r.beats.rps())),
    ("heartbeat p50 µs", |r, _| r.beats.percentile_us(50)),
    ("heartbeat p99 µs", |r, _| r.beats.percentile_us(99)),
    ("heartbeat µs CPU/req", |r, _| r.beats.cpu_us_per_req()),
    ("listing rps", |r, _| Some(r.listing.rps())),
    ("listing p50 µs", |r, _| r.listing.percentile_us(50)),
    ("listing p99 µs", |r, _| r.listing.percentile_us(99)),
    ("listing µs CPU/req", |r, _| r.listing.cpu_us_per_req()),
    ("RSS KiB/instance", |r, n| Some(r.rss_per_instance_kib(n))),
    ("(RSS idle KiB)", |r, _| Some(r.rss_idle_kib as f64)),
    ("(client µs CPU/heartbeat)", |r, _| {
        r.beats.client_us_per_req()
    }),
    ("(other procs % core, max)", |r, _| {
        Some(r.phase_max(PhaseResult::other_core_pct))
    }),
    ("(irq+softirq % core, max)", |r, _| {
        Some(r.phase_max(PhaseResult::irq_core_pct))
    }),
];

fn print_report(
    cfg: &BenchConfig,
    clk_tck: u64,
    rnacos_version: Option<&str>,
    results: &[(usize, SystemRun, Option<SystemRun>)],
) {
    println!("\n==================== registry bench results ====================");
    println!(
        "phase {} s; {} keep-alive connections ({} for the full listing, {} registering); server CPU from /proc (CLK_TCK {clk_tck})",
        cfg.phase.as_secs(),
        cfg.conns,
        cfg.list_conns,
        cfg.register_conns
    );
    println!(
        "r-nacos: {}",
        rnacos_version.unwrap_or("not run (column empty)")
    );
    println!(
        "rps = 2xx answers/s; CPU/req = server utime+stime over the phase plus {SETTLE:?} settle / answered requests; ratio = switchboard / r-nacos \
         (rps: higher is better; latency, CPU, RSS: lower is better)"
    );
    println!(
        "r-nacos 'servers' = instance list healthyOnly=true (all N hosts); switchboard /servers answers 5"
    );
    for (n, sb, rn) in results {
        println!();
        println!(
            "{:<27} {:>12} {:>12} {:>8}",
            format!("N = {n}"),
            "switchboard",
            "r-nacos",
            "ratio"
        );
        for (name, get) in METRICS {
            let a = get(sb, *n);
            let b = rn.as_ref().and_then(|r| get(r, *n));
            println!(
                "{name:<27} {:>12} {:>12} {:>8}",
                fmt_num(a),
                fmt_num(b),
                fmt_ratio(a, b)
            );
        }
    }

    let busiest = results
        .iter()
        .flat_map(|(_, sb, rn)| std::iter::once(sb).chain(rn.as_ref()))
        .map(|r| r.phase_max(PhaseResult::other_core_pct))
        .fold(0.0, f64::max);
    if busiest > 25.0 {
        println!(
            "\nWARNING: other processes used up to {busiest:.0}% of a core during a phase: \
             requests/s and latencies are disturbed (server CPU per request much less so)."
        );
    }

    println!("\nanswers and errors (non-2xx by status; errors = connect/IO/timeouts):");
    for (n, sb, rn) in results {
        for (kind, run) in [(Kind::Switchboard, Some(sb)), (Kind::RNacos, rn.as_ref())] {
            let Some(run) = run else { continue };
            for (phase, r) in [
                ("register", &run.register),
                ("servers", &run.servers),
                ("heartbeat", &run.beats),
                ("listing", &run.listing),
            ] {
                let t = &r.tally;
                let non2xx = if t.statuses.is_empty() {
                    "none".to_owned()
                } else {
                    join(&t.statuses, " ", |(s, c)| format!("{s}x{c}"))
                };
                let first = t
                    .first_error
                    .as_deref()
                    .map(|e| format!(" first: {e}"))
                    .unwrap_or_default();
                println!(
                    "  N={n:<6} {:<11} {phase:<9} answered {:>8}  2xx {:>8}  non-2xx {non2xx}  errors {}{first}",
                    kind.name(),
                    t.answered,
                    t.ok,
                    t.errors
                );
            }
            println!(
                "  N={n:<6} {:<11} registered {}/{n}; listing before {} after {}; log: {} warnings, {} errors; {}",
                kind.name(),
                run.registered,
                fmt_opt_count(run.listed_before),
                fmt_opt_count(run.listed_after),
                run.log.warnings,
                run.log.errors,
                run.stop_note
            );
            for line in &run.log.lines {
                println!("      | {line}");
            }
        }
    }

    println!("\ntargets (reported, not asserted):");
    for (n, sb, rn) in results {
        let check = |ok: bool| if ok { "met" } else { "MISSED" };
        for (what, phase) in [("heartbeat", &sb.beats), ("/servers", &sb.servers)] {
            if let Some(v) = phase.cpu_us_per_req() {
                println!(
                    "  N={n}: switchboard CPU per {what} {v:.1} µs (target ≤ 10): {}",
                    check(v <= 10.0)
                );
            }
        }
        match rn {
            Some(rn) if rn.register.rps() > 0.0 => {
                let x = sb.register.rps() / rn.register.rps();
                println!(
                    "  N={n}: durable registrations {:.0}/s, {x:.2}x r-nacos's {:.0}/s (not durable) (target ≥ 1x): {}",
                    sb.register.rps(),
                    rn.register.rps(),
                    check(x >= 1.0)
                );
            }
            _ => println!("  N={n}: registrations vs r-nacos: no r-nacos figure"),
        }
        let rss = sb.rss_per_instance_kib(*n);
        println!(
            "  N={n}: switchboard RSS {rss:.2} KiB/instance (target ≤ 1): {}",
            check(rss <= 1.0)
        );
        if *n == 1_000 {
            match rn {
                Some(rn) if rn.listing.rps() > 0.0 => {
                    let x = sb.listing.rps() / rn.listing.rps();
                    println!(
                        "  N={n}: full listing {x:.2}x r-nacos's rate (target ≥ 3x): {}",
                        check(x >= 3.0)
                    );
                }
                _ => println!("  N={n}: full listing vs r-nacos: no r-nacos figure"),
            }
        }
    }
    println!(
        "  (r-nacos reference on this box: ~28 µs CPU/heartbeat, ~0.5 ms CPU per full list of 1,000, 1.1-2.4 KiB RSS/instance)"
    );

    println!("\nreproduce (from the repository root):");
    println!(
        "  SB_BENCH_SECS={} SB_BENCH_SIZES={} SB_BENCH_CONNS={} SB_BENCH_REGISTER_CONNS={} SB_BENCH_LIST_CONNS={} SB_BENCH_CLIENT_THREADS={} cargo bench --bench registry",
        cfg.phase.as_secs(),
        join(&cfg.sizes, ",", usize::to_string),
        cfg.conns,
        cfg.register_conns,
        cfg.list_conns,
        cfg.client_threads
    );
}
