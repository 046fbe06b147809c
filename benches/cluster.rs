//! Cluster benchmark: three `switchboard serve` nodes sharing one PostgreSQL database,
//! fed a fleet's worth of heartbeats. One run, loopback (127.0.0.1) only.
//!
//! Run from the repository root (PostgreSQL must answer on 127.0.0.1:5432 as user
//! `postgres` with trust auth):
//!
//! ```text
//! cargo bench --bench cluster
//! ```
//!
//! What it does:
//!
//! 1. Creates a database of its own, `sb_bench_<random>`, on 127.0.0.1:5432 and starts
//!    `SB_BENCH_NODES` (3) release nodes on it: `switchboard serve --http 127.0.0.1:0
//!    --no-forward --db postgres://postgres@127.0.0.1:5432/<db>`.
//! 2. Registers `SB_BENCH_INSTANCES` (10,000) instances in service `bench`
//!    (`ttl_secs` 15), instance `i` on node `i % nodes`, and waits until every node
//!    lists them all as live.
//! 3. Heartbeats every instance every 5 s (the advised `heartbeat_secs` for a 15 s
//!    TTL), the instances' phases spread evenly over the period; the `k`-th heartbeat
//!    of instance `i` goes to node `(i + k) % nodes`, so each instance's heartbeats
//!    go round-robin over the nodes. `SB_BENCH_WARMUP_SECS` (12) of that unmeasured,
//!    then the measured window of `SB_BENCH_SECS` (30). The warm-up is longer than the
//!    10 s a PostgreSQL 15 backend may hold back its statistics once idle
//!    (`PGSTAT_IDLE_INTERVAL`), so the registrations' transactions do not leak into
//!    the window's count.
//! 4. During the window: `SB_BENCH_PROBES` (100) probe registrations in service
//!    `probe`, spread over the window, probe `j` registered on node `j % nodes` and
//!    polled on node `(j + 1) % nodes` with `GET /servers?service=probe&limit=100`
//!    every 5 ms until it is listed (at most 10 s): the delay from the registration's
//!    answer to the first answer listing it. Every 2 s, `GET /v1/services` on each node
//!    (live / expired counts of `bench`).
//! 5. Reads, over the window: PostgreSQL transactions per second of the bench database
//!    (`xact_commit + xact_rollback` of `pg_stat_database`, after minus before, and per
//!    5 s slice; a busy backend reports them about once a second, so both ends of the
//!    window lag alike), rows updated, scans and HOT updates of the `instances` table,
//!    WAL written (whole server), the CPU of the database's backends
//!    (`pg_stat_activity` PIDs, `/proc/PID/stat`), each node's CPU (utime+stime from
//!    `/proc/PID/stat`, as % of one core and µs per heartbeat it answered: the whole
//!    process, so sync, hand-out exchange and the probes' requests are included), each
//!    node's RSS, heartbeat answers that were not 200, and which other processes used
//!    the CPU (another benchmark running at the same time shows there).
//! 6. After the window, with heartbeats still running: `GET /v1/services` on every
//!    node (no `bench` instance should be expired), and the heartbeat age of the rows
//!    in the database.
//! 7. Stops the nodes it started, by PID (SIGTERM, then SIGKILL after 15 s), and drops
//!    the database.
//!
//! Load generator: a minimal HTTP/1.1 keep-alive client over tokio `TcpStream` on one
//! thread (the machine may have 2 cores shared by three nodes, PostgreSQL and this
//! process), `SB_BENCH_CONNS` (8) connections per node.
//!
//! Knobs (environment): `SB_BENCH_INSTANCES`, `SB_BENCH_SECS`, `SB_BENCH_WARMUP_SECS`,
//! `SB_BENCH_PROBES`, `SB_BENCH_NODES`, `SB_BENCH_CONNS`.
//!
//! Nothing here asserts numbers: it measures and prints.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::http::{self, Answer, Conn, JSON};
use support::procs::{self, LogInfo, Server};
use support::report::{Tally, join, micros};
use support::{knobs, sample};

/// Service of the heartbeating fleet.
const SERVICE: &str = "bench";
/// Service of the propagation probes.
const PROBE_SERVICE: &str = "probe";
/// TTL of the fleet's instances (the default); heartbeats come every third of it.
const TTL_SECS: u64 = 15;
/// The advised heartbeat period for [`TTL_SECS`].
const HEARTBEAT_EVERY: Duration = Duration::from_secs(TTL_SECS / 3);
/// TTL of the probes, so none expires during a run.
const PROBE_TTL_SECS: u64 = 300;
/// The PostgreSQL server (trust auth), without a database.
const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
/// The `Host` of every request.
const HOST: &str = "127.0.0.1";
/// Longest wait for one request (connect, or write plus the full answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one probe to show on the other node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a probe's node is polled.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// Longest registration of the whole fleet.
const REGISTER_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for every node to list the whole fleet.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for a node to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `GET /v1/services` is sampled on each node during the window.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Slice of the transactions-per-second series over the window.
const SERIES_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat sent this much later than planned counts as late.
const LATE: Duration = Duration::from_secs(1);
/// Lines of node warnings/errors kept for the report.
const MAX_LOG_LINES: usize = 6;
/// Processes whose presence means another benchmark may be loading the machine.
const BUSY_NAMES: [&str; 5] = ["iperf3", "nginx", "haproxy", "rnacos", "switchboard"];

fn main() {
    if knobs::asked_for("cluster") {
        knobs::block_on("cluster", 1, run(Config::from_env()));
    }
}

/// Settings from the environment.
#[derive(Debug, Clone)]
struct Config {
    nodes: usize,
    instances: usize,
    window: Duration,
    warmup: Duration,
    probes: usize,
    conns: usize,
}

impl Config {
    fn from_env() -> Self {
        Config {
            nodes: knobs::count("SB_BENCH_NODES", 3, 2, 5),
            instances: knobs::count("SB_BENCH_INSTANCES", 10_000, 1, 200_000),
            window: Duration::from_secs(knobs::num("SB_BENCH_SECS", 30, 1, 600)),
            warmup: Duration::from_secs(knobs::num("SB_BENCH_WARMUP_SECS", 12, 0, 600)),
            probes: knobs::count("SB_BENCH_PROBES", 100, 0, 1000),
            conns: knobs::count("SB_BENCH_CONNS", 8, 1, 128),
        }
    }

    /// The environment that reproduces this run.
    fn env_line(&self) -> String {
        format!(
            "SB_BENCH_NODES={} SB_BENCH_INSTANCES={} SB_BENCH_SECS={} SB_BENCH_WARMUP_SECS={} \
             SB_BENCH_PROBES={} SB_BENCH_CONNS={}",
            self.nodes,
            self.instances,
            self.window.as_secs(),
            self.warmup.as_secs(),
            self.probes,
            self.conns
        )
    }
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

async fn run(cfg: Config) -> anyhow::Result<()> {
    println!(
        "cluster bench: {} nodes on one PostgreSQL, {} instances heartbeating every {} s \
         round-robin over the nodes, {} s warm-up, {} s measured, {} propagation probes",
        cfg.nodes,
        cfg.instances,
        HEARTBEAT_EVERY.as_secs(),
        cfg.warmup.as_secs(),
        cfg.window.as_secs(),
        cfg.probes
    );
    let busy = other_load();
    if !busy.is_empty() {
        println!("note: other processes that may load the machine: {busy}");
    }
    let db = create_database().await?;
    println!("database: {db} on 127.0.0.1:5432");
    let outcome = tokio::select! {
        r = measure(&cfg, &db) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The nodes are gone by now (stopped, or killed when `measure` was dropped).
    let dropped = drop_database(&db).await;
    match outcome {
        Ok(report) => {
            print_report(&cfg, &db, &report);
            match dropped {
                Ok(()) => println!("database {db} dropped"),
                Err(err) => println!("database {db} NOT dropped: {err:#}"),
            }
            Ok(())
        }
        Err(err) => {
            if let Err(e) = dropped {
                eprintln!("database {db} NOT dropped: {e:#}");
            }
            Err(err)
        }
    }
}

/// Everything measured, for the report.
struct Report {
    nodes: Vec<NodeReport>,
    registered: usize,
    register_failures: u64,
    register_first_error: Option<String>,
    register_secs: f64,
    converge_secs: Option<f64>,
    window_secs: f64,
    pg: PgWindow,
    notify_queue_start: f64,
    /// Transactions per second of the bench database, per [`SERIES_EVERY`] slice.
    tps_series: Vec<f64>,
    pg_cpu_pct: Option<f64>,
    pg_backends: usize,
    /// At the window's start and end.
    table: Option<(TableStats, TableStats)>,
    db_ages: Option<DbAges>,
    probes: ProbeResult,
    loadgen_cpu_pct: f64,
    machine_busy_pct: f64,
    /// Other processes by CPU used in the window (% of one core).
    top_processes: Vec<(String, f64)>,
    cores: usize,
    beats_planned_window: u64,
    max_lag: Duration,
    late: u64,
}

struct NodeReport {
    addr: SocketAddr,
    pid: u32,
    window: BeatTally,
    total: BeatTally,
    cpu_pct: f64,
    us_per_beat: Option<f64>,
    rss_idle_kib: u64,
    rss_end_kib: u64,
    samples: Samples,
    end_view: Option<ServiceView>,
    end_probe_live: Option<u64>,
    stop_note: String,
    log: LogInfo,
}

async fn measure(cfg: &Config, db: &str) -> anyhow::Result<Report> {
    let bin = Path::new(env!("CARGO_BIN_EXE_switchboard"));
    let url = format!("{PG_BASE}/{db}");
    let clk_tck = sample::clock_ticks();
    let mut nodes = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        let node = start_node(bin, &url).with_context(|| format!("starting node {i}"))?;
        println!("node {i}: pid {} on http://{}", node.pid, node.addr);
        nodes.push(node);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let readyz = request("GET", "/readyz", &[], b"");
    for &addr in &addrs {
        http::wait_ready(addr, &readyz, Duration::from_millis(50)).await?;
    }
    let rss_idle: Vec<u64> = nodes
        .iter()
        .map(|n| sample::rss_kib(n.pid).unwrap_or(0))
        .collect();

    // Register the fleet.
    let started = Instant::now();
    let reg = register_fleet(cfg, &addrs).await?;
    let register_secs = started.elapsed().as_secs_f64();
    let fleet: Vec<Member> = reg.members.iter().flatten().cloned().collect();
    println!(
        "registered {} of {} instances in {register_secs:.1} s ({} failed)",
        fleet.len(),
        cfg.instances,
        reg.failures
    );
    if fleet.is_empty() {
        bail!(
            "no instance registered; first error: {}",
            reg.first_error.as_deref().unwrap_or("?")
        );
    }
    let converge_secs = converge(&addrs, fleet.len() as u64).await;
    match converge_secs {
        Some(s) => println!(
            "every node lists all {} as live {s:.2} s later",
            fleet.len()
        ),
        None => println!(
            "WARNING: not every node listed all {} as live within {CONVERGE_DEADLINE:?}",
            fleet.len()
        ),
    }
    for n in &mut nodes {
        n.check_alive()?;
    }

    // Heartbeats, warm-up, then the window.
    let fleet = Arc::new(fleet);
    let stop = CancellationToken::new();
    let measuring = Arc::new(AtomicBool::new(false));
    let stats: Arc<Vec<NodeStats>> =
        Arc::new((0..cfg.nodes).map(|_| NodeStats::default()).collect());
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let max_rounds = (cfg.warmup + cfg.window + Duration::from_secs(60)).as_secs()
        / HEARTBEAT_EVERY.as_secs()
        + 2;
    let mut beat_tasks = Vec::new();
    let mut senders = Vec::new();
    for (node, &addr) in addrs.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Job>(fleet.len().max(16));
        senders.push(tx);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..cfg.conns {
            beat_tasks.push(tokio::spawn(beat_worker(
                addr,
                Arc::clone(&rx),
                Arc::clone(&fleet),
                Arc::clone(&stats),
                node,
                Arc::clone(&measuring),
                stop.clone(),
            )));
        }
    }
    let dispatcher = tokio::spawn(dispatch(senders, fleet.len(), t0, max_rounds, stop.clone()));
    tokio::time::sleep_until(t0 + cfg.warmup).await;
    for n in &mut nodes {
        n.check_alive()?;
    }

    let mut admin = PgConnection::connect(&format!("{PG_BASE}/postgres"))
        .await
        .context("connecting to the postgres database for statistics")?;
    let mut bench_db = PgConnection::connect(&url)
        .await
        .context("connecting to the bench database for table statistics")?;
    let backends = pg_backends(&mut admin, db).await.unwrap_or_default();
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();

    // Window start.
    let table_before = table_stats(&mut bench_db).await.ok();
    let pg_before = pg_window_counters(&mut admin, db).await?;
    let before = Ticks::now(&pids);
    let window_start = tokio::time::Instant::now();
    measuring.store(true, Ordering::Relaxed);
    let window_end = window_start + cfg.window;
    let sampler = tokio::spawn(sample_services(addrs.clone(), window_end));
    let series = tokio::spawn(pg_series(db.to_owned(), window_start, window_end));
    let prober = tokio::spawn(run_probes(
        addrs.clone(),
        cfg.probes,
        window_start,
        window_end,
    ));

    tokio::time::sleep_until(window_end).await;

    // Window end.
    measuring.store(false, Ordering::Relaxed);
    let window_secs = window_start.elapsed().as_secs_f64();
    let after = Ticks::now(&pids);
    let pg_after = pg_window_counters(&mut admin, db).await?;
    let table_after = table_stats(&mut bench_db).await.ok();
    let rss_end: Vec<u64> = pids
        .iter()
        .map(|&p| sample::rss_kib(p).unwrap_or(0))
        .collect();
    let _ = admin.close().await;

    let samples = sampler.await.unwrap_or_default();
    let tps_series = series.await.unwrap_or_default();
    let probes = prober.await.unwrap_or_default();

    // Checks with heartbeats still running.
    let mut end_views = Vec::new();
    for &addr in &addrs {
        end_views.push(services_view(addr).await.ok());
    }
    let db_ages = db_ages(&mut bench_db).await.ok();
    let _ = bench_db.close().await;
    let table = table_before.zip(table_after);

    for n in &mut nodes {
        n.mark_load_stopped();
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), dispatcher).await;
    for task in beat_tasks {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, task).await;
    }

    let ticks_to_us = 1_000_000.0 / clk_tck as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used = |pid: &u32| {
        Some(
            after
                .procs
                .get(pid)?
                .1
                .saturating_sub(before.procs.get(pid)?.1),
        )
    };
    let pg_cpu_ticks: u64 = backends.iter().filter_map(used).sum();
    let pct = |ticks: u64| ticks as f64 * ticks_to_us / 1e6 / window_secs * 100.0;

    // Who used the CPU during the window, apart from the nodes and this process.
    let mut others: Vec<(u64, String)> = after
        .procs
        .iter()
        .filter(|(pid, _)| !pids.contains(pid) && **pid != std::process::id())
        .filter_map(|(pid, (name, ticks))| {
            let used = ticks.saturating_sub(before.procs.get(pid).map_or(0, |(_, t)| *t));
            let role = if backends.contains(pid) {
                " (backend of the bench db)"
            } else {
                ""
            };
            (used > 0).then(|| (used, format!("{name} {pid}{role}")))
        })
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    let top_processes: Vec<(String, f64)> = others
        .iter()
        .take(8)
        .map(|(t, name)| (name.clone(), pct(*t)))
        .collect();

    let mut children: Vec<&mut Child> = nodes.iter_mut().map(|n| &mut n.child).collect();
    let stop_notes = procs::stop_all(&mut children, STOP_TIMEOUT);
    let mut node_reports = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let window = stats[i]
            .window
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        let total = stats[i].total.lock().map(|t| t.clone()).unwrap_or_default();
        let cpu = after.nodes[i].saturating_sub(before.nodes[i]);
        let answered = window.tally.answered;
        let stop_note = stop_notes.get(i).cloned().unwrap_or_default();
        let log = node.log_info(MAX_LOG_LINES);
        let end_view = end_views[i].as_ref();
        node_reports.push(NodeReport {
            addr: node.addr,
            pid: node.pid,
            cpu_pct: pct(cpu),
            us_per_beat: (answered > 0).then(|| cpu as f64 * ticks_to_us / answered as f64),
            window,
            total,
            rss_idle_kib: rss_idle[i],
            rss_end_kib: rss_end[i],
            samples: samples.get(i).cloned().unwrap_or_default(),
            end_view: end_view.and_then(|v| v.get(SERVICE).cloned()),
            end_probe_live: end_view.and_then(|v| v.get(PROBE_SERVICE)).map(|s| s.live),
            stop_note,
            log,
        });
    }
    let (max_lag, late) = stats.iter().fold((Duration::ZERO, 0), |(m, l), s| {
        let t = s
            .window
            .lock()
            .map(|t| (t.max_lag, t.late))
            .unwrap_or_default();
        (m.max(t.0), l + t.1)
    });
    let planned = (fleet.len() as f64 * window_secs / HEARTBEAT_EVERY.as_secs_f64()).round() as u64;
    Ok(Report {
        nodes: node_reports,
        registered: fleet.len(),
        register_failures: reg.failures,
        register_first_error: reg.first_error,
        register_secs,
        converge_secs,
        window_secs,
        pg: pg_after.minus(&pg_before),
        notify_queue_start: pg_before.notify_queue,
        tps_series,
        pg_cpu_pct: (!backends.is_empty()).then(|| pct(pg_cpu_ticks)),
        pg_backends: backends.len(),
        table,
        db_ages,
        probes,
        loadgen_cpu_pct: pct(after.me.saturating_sub(before.me)),
        machine_busy_pct: pct(after.machine.saturating_sub(before.machine)) / cores as f64,
        top_processes,
        cores,
        beats_planned_window: planned,
        max_lag,
        late,
    })
}

// ---------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------

/// A registered instance of the fleet.
#[derive(Debug, Clone)]
struct Member {
    /// Heartbeat path.
    path: String,
    lease: String,
}

struct Registration {
    members: Vec<Option<Member>>,
    failures: u64,
    first_error: Option<String>,
}

async fn register_fleet(cfg: &Config, addrs: &[SocketAddr]) -> anyhow::Result<Registration> {
    let members: Arc<Mutex<Vec<Option<Member>>>> = Arc::new(Mutex::new(vec![None; cfg.instances]));
    let errors: Arc<Mutex<(u64, Option<String>)>> = Arc::new(Mutex::new((0, None)));
    let mut tasks = Vec::new();
    let nodes = addrs.len();
    for (node, &addr) in addrs.iter().enumerate() {
        for w in 0..cfg.conns {
            let members = Arc::clone(&members);
            let errors = Arc::clone(&errors);
            let (n, conns) = (cfg.instances, cfg.conns);
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let mut i = node + w * nodes;
                while i < n {
                    let body = format!(
                        "{{\"address\":\"{}\",\"ttl_secs\":{TTL_SECS}}}",
                        http::instance_address(i)
                    );
                    let path = format!("/v1/services/{SERVICE}/instances");
                    let req = request("POST", &path, &[], body.as_bytes());
                    let mut outcome = Err("not tried".to_owned());
                    for _ in 0..3 {
                        outcome = call(&mut conn, addr, &req).await.and_then(|a| {
                            if a.status == 200 || a.status == 201 {
                                http::parse_registration(&a.body)
                            } else {
                                Err(format!(
                                    "status {}: {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                ))
                            }
                        });
                        if outcome.is_ok() {
                            break;
                        }
                    }
                    match outcome {
                        Ok((id, lease)) => {
                            let path = format!("/v1/services/{SERVICE}/instances/{id}/heartbeat");
                            if let Ok(mut m) = members.lock() {
                                m[i] = Some(Member { path, lease });
                            }
                        }
                        Err(err) => {
                            if let Ok(mut e) = errors.lock() {
                                e.0 += 1;
                                e.1.get_or_insert(err);
                            }
                        }
                    }
                    i += nodes * conns;
                }
            }));
        }
    }
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::time::timeout(REGISTER_DEADLINE, all)
        .await
        .map_err(|_| anyhow!("registering the fleet took over {REGISTER_DEADLINE:?}"))?;
    let members = std::mem::take(&mut *members.lock().map_err(|_| anyhow!("poisoned"))?);
    let (failures, first_error) = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Registration {
        members,
        failures,
        first_error,
    })
}

/// Seconds until every node lists `expected` live instances of the fleet.
async fn converge(addrs: &[SocketAddr], expected: u64) -> Option<f64> {
    let started = Instant::now();
    let mut done = vec![false; addrs.len()];
    while started.elapsed() < CONVERGE_DEADLINE {
        for (i, &addr) in addrs.iter().enumerate() {
            if !done[i]
                && let Ok(view) = services_view(addr).await
            {
                done[i] = view.get(SERVICE).is_some_and(|s| s.live >= expected);
            }
        }
        if done.iter().all(|&d| d) {
            return Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

// ---------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------

/// One planned heartbeat.
#[derive(Debug, Clone, Copy)]
struct Job {
    member: u32,
    round: u32,
    due: tokio::time::Instant,
}

/// Heartbeat answers of one node.
#[derive(Debug, Default, Clone)]
struct BeatTally {
    /// 200 answers count as ok; latencies in microseconds.
    tally: Tally,
    max_lag: Duration,
    late: u64,
}

impl BeatTally {
    fn record(&mut self, outcome: &Result<u16, String>, latency: Duration, lag: Duration) {
        match outcome {
            Ok(status) => {
                self.tally
                    .note_answer(*status, *status == 200, micros(latency), usize::MAX)
            }
            Err(err) => self.tally.note_error(err.clone()),
        }
        self.max_lag = self.max_lag.max(lag);
        if lag > LATE {
            self.late += 1;
        }
    }
}

#[derive(Default)]
struct NodeStats {
    window: Mutex<BeatTally>,
    total: Mutex<BeatTally>,
}

/// Sends every planned heartbeat to its node's queue at its time, until `stop` or
/// `max_rounds` heartbeat periods.
async fn dispatch(
    senders: Vec<mpsc::Sender<Job>>,
    members: usize,
    t0: tokio::time::Instant,
    max_rounds: u64,
    stop: CancellationToken,
) {
    let nodes = senders.len();
    let period = HEARTBEAT_EVERY.as_nanos() as u64;
    for round in 0..max_rounds {
        let round_start = t0 + HEARTBEAT_EVERY * round as u32;
        for member in 0..members {
            let offset = period * member as u64 / members as u64;
            let due = round_start + Duration::from_nanos(offset);
            if due > tokio::time::Instant::now() + Duration::from_millis(1) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(due) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
            let node = (member + round as usize) % nodes;
            let job = Job {
                member: member as u32,
                round: round as u32,
                due,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                sent = senders[node].send(job) => if sent.is_err() { return },
            }
        }
    }
}

/// Sends the heartbeats queued for one node on one keep-alive connection.
async fn beat_worker(
    addr: SocketAddr,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    fleet: Arc<Vec<Member>>,
    stats: Arc<Vec<NodeStats>>,
    node: usize,
    measuring: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    loop {
        let job = tokio::select! {
            () = stop.cancelled() => return,
            job = async { queue.lock().await.recv().await } => job,
        };
        let Some(job) = job else { return };
        let Some(member) = fleet.get(job.member as usize) else {
            continue;
        };
        let connections = (job.member as u64 * 37 + job.round as u64 * 11) % 500;
        let body = format!("{{\"connections\":{connections}}}");
        let req = request(
            "PUT",
            &member.path,
            &[("X-Lease", &member.lease)],
            body.as_bytes(),
        );
        let in_window = measuring.load(Ordering::Relaxed);
        let sent = tokio::time::Instant::now();
        let lag = sent.saturating_duration_since(job.due);
        let outcome = call(&mut conn, addr, &req).await.map(|a| a.status);
        let latency = sent.elapsed();
        if let Ok(mut t) = stats[node].total.lock() {
            t.record(&outcome, latency, lag);
        }
        if in_window && let Ok(mut t) = stats[node].window.lock() {
            t.record(&outcome, latency, lag);
        }
    }
}

// ---------------------------------------------------------------------------------
// Probes and samples
// ---------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct ProbeResult {
    planned: usize,
    registered: usize,
    seen: usize,
    timed_out: usize,
    failed: usize,
    first_error: Option<String>,
    delays_us: Vec<u64>,
}

/// Probe `j`: registered on node `j % n`, polled on node `(j + 1) % n` until listed.
async fn run_probes(
    addrs: Vec<SocketAddr>,
    probes: usize,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> ProbeResult {
    let mut result = ProbeResult {
        planned: probes,
        ..ProbeResult::default()
    };
    if probes == 0 {
        return result;
    }
    let n = addrs.len();
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let spacing = (end - start) / probes as u32;
    let poll = request(
        "GET",
        &format!("/servers?service={PROBE_SERVICE}&limit=100"),
        &[],
        b"",
    );
    for j in 0..probes {
        let at = start + spacing * j as u32 + spacing / 2;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let address = format!("10.250.{}.{}:7000", j / 200, j % 200 + 1);
        let body = format!("{{\"address\":\"{address}\",\"ttl_secs\":{PROBE_TTL_SECS}}}");
        let req = request(
            "POST",
            &format!("/v1/services/{PROBE_SERVICE}/instances"),
            &[],
            body.as_bytes(),
        );
        let (on, seen_on) = (j % n, (j + 1) % n);
        match call(&mut conns[on], addrs[on], &req).await {
            Ok(a) if a.status == 200 || a.status == 201 => {}
            Ok(a) => {
                result.failed += 1;
                result.first_error.get_or_insert_with(|| {
                    format!(
                        "register: status {} {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    )
                });
                continue;
            }
            Err(err) => {
                result.failed += 1;
                result.first_error.get_or_insert(format!("register: {err}"));
                continue;
            }
        }
        let acked = Instant::now();
        result.registered += 1;
        let needle = format!("\"{address}\"");
        let mut seen = false;
        while acked.elapsed() < PROBE_TIMEOUT {
            if let Ok(a) = call(&mut conns[seen_on], addrs[seen_on], &poll).await
                && a.status == 200
                && http::find(&a.body, needle.as_bytes()).is_some()
            {
                result
                    .delays_us
                    .push(u64::try_from(acked.elapsed().as_micros()).unwrap_or(u64::MAX));
                seen = true;
                break;
            }
            tokio::time::sleep(PROBE_POLL).await;
        }
        if seen {
            result.seen += 1;
        } else {
            result.timed_out += 1;
        }
    }
    result
}

/// One service in `GET /v1/services`.
#[derive(Debug, Clone, Default)]
struct ServiceView {
    live: u64,
    expired: u64,
    draining: u64,
    self_preservation: bool,
}

async fn services_view(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, ServiceView>> {
    let mut conn = None;
    let a = call(&mut conn, addr, &request("GET", "/v1/services", &[], b""))
        .await
        .map_err(|e| anyhow!(e))?;
    parse_services(&a.body)
}

fn parse_services(body: &[u8]) -> anyhow::Result<BTreeMap<String, ServiceView>> {
    let v: Value = serde_json::from_slice(body).context("GET /v1/services: bad JSON")?;
    let list = v
        .get("services")
        .and_then(Value::as_array)
        .context("GET /v1/services: no services")?;
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(list
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_owned();
            Some((
                name,
                ServiceView {
                    live: num(s, "live"),
                    expired: num(s, "expired"),
                    draining: num(s, "draining"),
                    self_preservation: s
                        .get("self_preservation")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
            ))
        })
        .collect())
}

/// `GET /v1/services` samples of one node during the window.
#[derive(Debug, Clone, Default)]
struct Samples {
    taken: u64,
    failed: u64,
    min_live: Option<u64>,
    max_expired: u64,
    self_preservation: bool,
}

async fn sample_services(addrs: Vec<SocketAddr>, end: tokio::time::Instant) -> Vec<Samples> {
    let mut out = vec![Samples::default(); addrs.len()];
    let mut conns: Vec<Option<Conn>> = (0..addrs.len()).map(|_| None).collect();
    let req = request("GET", "/v1/services", &[], b"");
    let mut next = tokio::time::Instant::now() + SAMPLE_EVERY / 2;
    while next < end {
        tokio::time::sleep_until(next).await;
        next += SAMPLE_EVERY;
        for (i, &addr) in addrs.iter().enumerate() {
            let view = match call(&mut conns[i], addr, &req).await {
                Ok(a) if a.status == 200 => parse_services(&a.body).ok(),
                _ => None,
            };
            let s = &mut out[i];
            match view.as_ref().and_then(|v| v.get(SERVICE)) {
                Some(v) => {
                    s.taken += 1;
                    s.min_live = Some(s.min_live.map_or(v.live, |m| m.min(v.live)));
                    s.max_expired = s.max_expired.max(v.expired);
                    s.self_preservation |= v.self_preservation;
                }
                None => s.failed += 1,
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------

async fn create_database() -> anyhow::Result<String> {
    let name = format!("sb_bench_{:016x}", rand::random::<u64>());
    let mut conn = PgConnection::connect(&format!("{PG_BASE}/postgres"))
        .await
        .context("PostgreSQL must answer on 127.0.0.1:5432 as user postgres (trust auth)")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = conn.close().await;
    Ok(name)
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&format!("{PG_BASE}/postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Cumulative counters of the bench database (`pg_stat_database`) and of WAL.
#[derive(Debug, Default, Clone, Copy)]
struct PgWindow {
    commits: i64,
    rollbacks: i64,
    tup_updated: i64,
    tup_inserted: i64,
    tup_returned: i64,
    wal_bytes: i64,
    /// `pg_notification_queue_usage()` (not a counter: the reading itself).
    notify_queue: f64,
}

impl PgWindow {
    fn minus(&self, before: &PgWindow) -> PgWindow {
        PgWindow {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            tup_updated: self.tup_updated - before.tup_updated,
            tup_inserted: self.tup_inserted - before.tup_inserted,
            tup_returned: self.tup_returned - before.tup_returned,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            notify_queue: self.notify_queue,
        }
    }
}

async fn pg_window_counters(conn: &mut PgConnection, db: &str) -> anyhow::Result<PgWindow> {
    let row: (i64, i64, i64, i64, i64, i64, f64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback, tup_updated, tup_inserted, tup_returned, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
         pg_notification_queue_usage() \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(conn)
    .await
    .context("reading pg_stat_database")?;
    Ok(PgWindow {
        commits: row.0,
        rollbacks: row.1,
        tup_updated: row.2,
        tup_inserted: row.3,
        tup_returned: row.4,
        wal_bytes: row.5,
        notify_queue: row.6,
    })
}

/// Transactions per second of `db`, per [`SERIES_EVERY`] slice of the window, read on a
/// connection of its own to the `postgres` database.
async fn pg_series(db: String, start: tokio::time::Instant, end: tokio::time::Instant) -> Vec<f64> {
    let mut out = Vec::new();
    let Ok(mut conn) = PgConnection::connect(&format!("{PG_BASE}/postgres")).await else {
        return out;
    };
    let read = async |conn: &mut PgConnection| -> Option<i64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&db)
        .fetch_one(conn)
        .await
        .ok()
    };
    let mut last = read(&mut conn).await;
    let mut at = start;
    for _ in 0..10_000 {
        let next = at + SERIES_EVERY;
        if next > end {
            break;
        }
        tokio::time::sleep_until(next).await;
        let now = read(&mut conn).await;
        if let (Some(a), Some(b)) = (last, now) {
            out.push((b - a) as f64 / (next - at).as_secs_f64());
        }
        last = now;
        at = next;
    }
    let _ = conn.close().await;
    out
}

async fn pg_backends(conn: &mut PgConnection, db: &str) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(conn)
        .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// Cumulative statistics of the `instances` table (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy, Default)]
struct TableStats {
    seq_scans: i64,
    seq_rows: i64,
    idx_scans: i64,
    updates: i64,
    hot_updates: i64,
    live: i64,
    dead: i64,
    total_bytes: i64,
    autovacuums: i64,
}

async fn table_stats(conn: &mut PgConnection) -> anyhow::Result<TableStats> {
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT seq_scan, seq_tup_read, COALESCE(idx_scan, 0), n_tup_upd, n_tup_hot_upd, \
         n_live_tup, n_dead_tup, pg_total_relation_size(relid), autovacuum_count \
         FROM pg_stat_user_tables WHERE relname = 'instances'",
    )
    .fetch_one(conn)
    .await?;
    Ok(TableStats {
        seq_scans: row.0,
        seq_rows: row.1,
        idx_scans: row.2,
        updates: row.3,
        hot_updates: row.4,
        live: row.5,
        dead: row.6,
        total_bytes: row.7,
        autovacuums: row.8,
    })
}

/// Heartbeat ages of the fleet's rows, by the database clock.
#[derive(Debug, Clone, Copy)]
struct DbAges {
    rows: i64,
    max_secs: f64,
    over_heartbeat: i64,
    over_ttl: i64,
}

async fn db_ages(conn: &mut PgConnection) -> anyhow::Result<DbAges> {
    let row: (i64, f64, i64, i64) = sqlx::query_as(
        "SELECT count(*), \
         COALESCE(max(EXTRACT(EPOCH FROM now() - last_heartbeat)), 0)::float8, \
         count(*) FILTER (WHERE now() - last_heartbeat > make_interval(secs => $2)), \
         count(*) FILTER (WHERE now() - last_heartbeat > make_interval(secs => $3)) \
         FROM instances WHERE service = $1 AND NOT deleted",
    )
    .bind(SERVICE)
    .bind(HEARTBEAT_EVERY.as_secs_f64() + 1.0)
    .bind(TTL_SECS as f64)
    .fetch_one(conn)
    .await?;
    Ok(DbAges {
        rows: row.0,
        max_secs: row.1,
        over_heartbeat: row.2,
        over_ttl: row.3,
    })
}

// ---------------------------------------------------------------------------------
// HTTP and node processes
// ---------------------------------------------------------------------------------

/// A request to a node; JSON bodies.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut all = headers.to_vec();
    if method != "GET" {
        all.push(JSON);
    }
    http::request(method, path, HOST, &all, body)
}

/// One request on `conn`, body kept, bounded by [`REQUEST_TIMEOUT`].
async fn call(conn: &mut Option<Conn>, addr: SocketAddr, req: &[u8]) -> Result<Answer, String> {
    http::call(conn, addr, req, true, REQUEST_TIMEOUT).await
}

fn start_node(bin: &Path, db_url: &str) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let args = ["--no-forward", "--db", db_url];
    let (mut node, _) =
        procs::start_switchboard(Command::new(bin), dir, &args, &[], http::START_TIMEOUT)?;
    node.name = "node";
    Ok(node)
}

/// Processes that look like another benchmark (or another cluster) at work.
fn other_load() -> String {
    let me = std::process::id();
    let mut found = Vec::new();
    for pid in sample::pids().into_iter().filter(|&p| p != me) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(prog) = args.first() else { continue };
        let base = prog.rsplit('/').next().unwrap_or(prog);
        let base = base.split(':').next().unwrap_or(base);
        if BUSY_NAMES.contains(&base)
            && (base != "switchboard" || args.iter().any(|a| a == "serve"))
        {
            found.push(format!("{base} (pid {pid})"));
        }
    }
    found.join(", ")
}

/// CPU ticks at one end of the window.
struct Ticks {
    nodes: Vec<u64>,
    me: u64,
    /// Busy ticks of all cores.
    machine: u64,
    /// Every process (the database's backends among them), to see who used the CPU.
    procs: BTreeMap<u32, (String, u64)>,
}

impl Ticks {
    fn now(nodes: &[u32]) -> Ticks {
        let ticks = |p: u32| sample::cpu_ticks(p).unwrap_or(0);
        Ticks {
            nodes: nodes.iter().map(|&p| ticks(p)).collect(),
            me: ticks(std::process::id()),
            machine: sample::machine().map_or(0, sample::Machine::busy),
            procs: all_proc_ticks(),
        }
    }
}

/// CPU ticks and name of every process, to see who else used the machine.
fn all_proc_ticks() -> BTreeMap<u32, (String, u64)> {
    let stats = sample::pids()
        .into_iter()
        .filter_map(|pid| Some((pid, sample::stat(pid)?)));
    stats.map(|(pid, s)| (pid, (s.name, s.ticks))).collect()
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

/// The `q` quantile of sorted values (nearest rank).
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / 1000.0))
}

fn print_report(cfg: &Config, db: &str, r: &Report) {
    let w = r.window_secs;
    println!();
    println!(
        "== cluster bench: {} nodes, {} instances (ttl {TTL_SECS} s, heartbeat every {} s, \
         round-robin over nodes), window {w:.1} s, {} cores ==",
        r.nodes.len(),
        r.registered,
        HEARTBEAT_EVERY.as_secs(),
        r.cores
    );
    println!(
        "registration: {} ok, {} failed in {:.1} s ({:.0}/s){}; all nodes listed all {}",
        r.registered,
        r.register_failures,
        r.register_secs,
        r.registered as f64 / r.register_secs.max(1e-9),
        r.register_first_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" first error: {e}")),
        r.converge_secs.map_or_else(
            || "NEVER (within 60 s)".to_owned(),
            |s| format!("{s:.2} s after the last registration")
        ),
    );
    println!();
    println!(
        "{:<4} {:>7} {:>21} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}",
        "node",
        "pid",
        "http",
        "hb/s",
        "hb",
        "non200",
        "io err",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU %",
        "µs/hb",
        "RSS0 MiB",
        "RSS MiB",
        "live/expired",
    );
    let mut total_answered = 0;
    let mut total_cpu = 0.0;
    for (i, n) in r.nodes.iter().enumerate() {
        let mut lat = n.window.tally.latencies.clone();
        lat.sort_unstable();
        let answered = n.window.tally.answered;
        total_answered += answered;
        total_cpu += n.cpu_pct;
        let view = n
            .end_view
            .as_ref()
            .map_or_else(|| "?".to_owned(), |v| format!("{}/{}", v.live, v.expired));
        println!(
            "{:<4} {:>7} {:>21} {:>8.0} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8.1} {:>8} {:>9.1} {:>9.1} {:>14}",
            i,
            n.pid,
            n.addr.to_string(),
            answered as f64 / w,
            answered,
            n.window.tally.non_ok(),
            n.window.tally.errors,
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            ms(lat.last().copied()),
            n.cpu_pct,
            n.us_per_beat
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            n.rss_idle_kib as f64 / 1024.0,
            n.rss_end_kib as f64 / 1024.0,
            view,
        );
    }
    println!(
        "all  {:>7} {:>21} {:>8.0} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8.1} {:>8}",
        "",
        "",
        total_answered as f64 / w,
        total_answered,
        r.nodes.iter().map(|n| n.window.tally.non_ok()).sum::<u64>(),
        r.nodes.iter().map(|n| n.window.tally.errors).sum::<u64>(),
        "",
        "",
        "",
        total_cpu,
        if total_answered > 0 {
            format!("{:.0}", total_cpu / 100.0 * w * 1e6 / total_answered as f64)
        } else {
            "-".to_owned()
        },
    );
    println!(
        "  (hb: heartbeats answered in the window, planned {}; CPU % of one core over the \
         window; RSS0 before registration, RSS at window end; live/expired of `{SERVICE}` \
         after the window)",
        r.beats_planned_window
    );
    println!();
    let pg = &r.pg;
    println!("PostgreSQL (database {db}, over the window):");
    println!(
        "  transactions/s      {:>10.1}   ({} commits, {} rollbacks)",
        (pg.commits + pg.rollbacks) as f64 / w,
        pg.commits,
        pg.rollbacks
    );
    println!(
        "  transactions/s per {} s slice: {}",
        SERIES_EVERY.as_secs(),
        join(&r.tps_series, " ", |t| format!("{t:.0}"))
    );
    println!(
        "  rows updated/s      {:>10.0}   (inserted {}, returned {})",
        pg.tup_updated as f64 / w,
        pg.tup_inserted,
        pg.tup_returned
    );
    println!(
        "  WAL written         {:>10.1}   KiB/s (whole server)",
        pg.wal_bytes as f64 / 1024.0 / w
    );
    println!(
        "  NOTIFY queue        {:>10.0}   KiB unread at the window's start, {:.0} KiB at its end \
         (pg_notification_queue_usage() x 8 GiB, whole server)",
        r.notify_queue_start * 8.0 * 1024.0 * 1024.0,
        pg.notify_queue * 8.0 * 1024.0 * 1024.0
    );
    match r.pg_cpu_pct {
        Some(p) => println!(
            "  backends CPU        {p:>10.1}   % of one core ({} backends of the database)",
            r.pg_backends
        ),
        None => println!("  backends CPU                 -   (no backend PIDs found)"),
    }
    if let Some((b, a)) = r.table {
        let upd = a.updates - b.updates;
        let hot = a.hot_updates - b.hot_updates;
        println!(
            "  instances table     {:>10.1}   seq scans/s reading {:.0} rows/s, {:.1} index scans/s",
            (a.seq_scans - b.seq_scans) as f64 / w,
            (a.seq_rows - b.seq_rows) as f64 / w,
            (a.idx_scans - b.idx_scans) as f64 / w,
        );
        println!(
            "                      {:>10.0}   row updates/s, {:.1} % HOT; at the end {} live / {} dead rows, \
             {:.1} MiB with indexes; {} autovacuum runs in the window, {} since creation",
            upd as f64 / w,
            if upd > 0 {
                hot as f64 * 100.0 / upd as f64
            } else {
                0.0
            },
            a.live,
            a.dead,
            a.total_bytes as f64 / 1024.0 / 1024.0,
            a.autovacuums - b.autovacuums,
            a.autovacuums
        );
    }
    if let Some(a) = r.db_ages {
        println!(
            "  heartbeat age in db {:>10.2}   s max over {} rows; {} older than {} s, {} older than the {TTL_SECS} s ttl",
            a.max_secs,
            a.rows,
            a.over_heartbeat,
            HEARTBEAT_EVERY.as_secs() + 1,
            a.over_ttl
        );
    }
    println!();
    let p = &r.probes;
    let mut d = p.delays_us.clone();
    d.sort_unstable();
    println!(
        "propagation (register on node i, listed by GET /servers on node i+1, polled every {} ms):",
        PROBE_POLL.as_millis()
    );
    println!(
        "  {} planned, {} registered, {} seen, {} not seen within {} s, {} failed; \
         p50 {} ms, p99 {} ms, max {} ms{}",
        p.planned,
        p.registered,
        p.seen,
        p.timed_out,
        PROBE_TIMEOUT.as_secs(),
        p.failed,
        ms(quantile(&d, 0.5)),
        ms(quantile(&d, 0.99)),
        ms(d.last().copied()),
        p.first_error
            .as_ref()
            .map_or_else(String::new, |e| format!("; first error: {e}"))
    );
    println!();
    println!(
        "liveness during the window (GET /v1/services every {} s):",
        SAMPLE_EVERY.as_secs()
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let s = &n.samples;
        let end = n.end_view.as_ref();
        println!(
            "  node {i}: {} samples ({} failed), min live {}, max expired {}, self-preservation {}; \
             after: live {}, expired {}, draining {}, probes live {}",
            s.taken,
            s.failed,
            s.min_live.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            s.max_expired,
            if s.self_preservation || end.is_some_and(|v| v.self_preservation) {
                "SEEN"
            } else {
                "no"
            },
            end.map_or_else(|| "?".to_owned(), |v| v.live.to_string()),
            end.map_or_else(|| "?".to_owned(), |v| v.expired.to_string()),
            end.map_or_else(|| "?".to_owned(), |v| v.draining.to_string()),
            n.end_probe_live
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        );
    }
    println!();
    println!(
        "load generator: {:.1} % of one core; heartbeats sent over {} s late: {}, latest {:.0} ms; \
         machine busy {:.1} % of {} cores",
        r.loadgen_cpu_pct,
        LATE.as_secs(),
        r.late,
        r.max_lag.as_secs_f64() * 1000.0,
        r.machine_busy_pct,
        r.cores
    );
    println!(
        "other processes by CPU in the window (% of one core): {}",
        join(&r.top_processes, ", ", |(name, p)| format!("{name} {p:.1}"))
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let t = &n.total;
        let mut odd = Vec::new();
        if !t.tally.statuses.is_empty() {
            odd.push(format!("non-200 over the whole run {:?}", t.tally.statuses));
        }
        if t.tally.errors > 0 {
            odd.push(format!(
                "{} IO errors ({})",
                t.tally.errors,
                t.tally.first_error.as_deref().unwrap_or("?")
            ));
        }
        if n.log.warnings + n.log.errors > 0 {
            odd.push(format!(
                "log: {} warnings, {} errors ({} of them after the load stopped), e.g. {:?}",
                n.log.warnings, n.log.errors, n.log.after_load, n.log.lines
            ));
        }
        println!(
            "node {i}: {}{}",
            n.stop_note,
            if odd.is_empty() {
                String::new()
            } else {
                format!("; {}", odd.join("; "))
            }
        );
    }
    println!();
    println!("command: {} cargo bench --bench cluster", cfg.env_line());
}
