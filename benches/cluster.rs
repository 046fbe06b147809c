//! Cluster benchmark: three `switchboard serve` nodes sharing one PostgreSQL database,
//! fed a fleet's worth of heartbeats, and one node alone as the baseline. One run,
//! loopback (127.0.0.1) only.
//!
//! Run from the repository root (PostgreSQL must answer on 127.0.0.1:5432 as user
//! `postgres` with trust auth), one benchmark at a time:
//!
//! ```text
//! flock /tmp/bench.lock cargo bench --bench cluster
//! flock /tmp/bench.lock env SB_BENCH_INSTANCES=30000 cargo bench --bench cluster
//! ```
//!
//! What it does, once for the cluster and once for the baseline:
//!
//! 1. The cluster: creates a database of its own, `sb_bench_<random>`, on
//!    127.0.0.1:5432 and starts `SB_BENCH_NODES` (3) release nodes on it:
//!    `switchboard serve --http 127.0.0.1:0 --no-forward --db
//!    postgres://postgres@127.0.0.1:5432/<db>`. The baseline (`SB_BENCH_BASELINE`):
//!    `sqlite` (the default) is one node of the same binary on a SQLite file in its
//!    temp dir (`--db sqlite://switchboard.db`, the single-node default);
//!    `postgres` one node alone on a database of its own (cluster mode with one
//!    node); `none` skips it.
//! 2. Registers `SB_BENCH_INSTANCES` (10,000) instances in service `bench`
//!    (`ttl_secs` 15), instance `i` on node `i % nodes`, over `SB_BENCH_CONNS` (8)
//!    connections per node. As a real backend does, each instance heartbeats from
//!    the moment its registration answered: every 5 s (the advised `heartbeat_secs`
//!    for a 15 s TTL) from then on, its `k`-th heartbeat to node `(i + k) % nodes`, so
//!    each instance's heartbeats go round-robin over the nodes. A registration slower
//!    than the TTL therefore shows as a slow registration, not as a fleet that expired
//!    before its first heartbeat (as it did when heartbeats began after the last
//!    registration: 533 registrations/s, and all 180,034 heartbeats of the window 404).
//! 3. Waits until every node lists the fleet as live, then `SB_BENCH_WARMUP_SECS` (12)
//!    unmeasured, then the measured window of `SB_BENCH_SECS` (30). The warm-up is
//!    longer than the 10 s a PostgreSQL 15 backend may hold back its statistics once
//!    idle (`PGSTAT_IDLE_INTERVAL`), so the registrations' transactions do not leak
//!    into the window's count.
//! 4. During the cluster's window: `SB_BENCH_PROBES` (100) probe registrations in
//!    service `probe`, spread over the window, probe `j` registered on node `j % nodes`
//!    and polled on node `(j + 1) % nodes` with `GET /servers?service=probe&limit=100`
//!    every 5 ms until it is listed (at most 10 s): the delay from the registration's
//!    answer to the first answer listing it. Every 2 s, `GET /v1/services` on each
//!    node (live / expired counts of `bench`).
//! 5. Reads, over the window: each node's CPU (utime+stime from `/proc/PID/stat`, as %
//!    of one core and µs per heartbeat it answered: the whole process, so sync,
//!    hand-out exchange and the probes' requests are included), heartbeats answered
//!    200 and 404 per second, each node's RSS; on PostgreSQL: transactions per second
//!    of the bench database (`xact_commit + xact_rollback` of `pg_stat_database`, after
//!    minus before, and per 5 s slice; a busy backend reports them about once a
//!    second, so both ends of the window lag alike), the `instances` table's
//!    `pg_stat_user_tables` before and after the window (`n_tup_upd`, `n_tup_hot_upd`,
//!    `n_dead_tup`, `n_live_tup`, scans, autovacuum runs), rows updated per heartbeat
//!    answered (`n_tup_upd` of the window over the heartbeats answered 200), WAL
//!    written (whole server), the CPU of the database's backends (`pg_stat_activity`
//!    PIDs, `/proc/PID/stat`), and which other processes used the CPU (another
//!    benchmark running at the same time shows there).
//! 6. After the window, with heartbeats still running: `GET /v1/services` on every
//!    node (no `bench` instance should be expired), and the heartbeat age of the rows
//!    in the database.
//! 7. Stops the nodes it started, by PID (SIGTERM, then SIGKILL after 15 s), and drops
//!    the database.
//!
//! Then it prints each node's CPU per heartbeat beside the baseline's, with the ratio
//! and the goal (at most 2 × a single node's).
//!
//! Load generator: a minimal HTTP/1.1 keep-alive client over tokio `TcpStream` on one
//! thread (the machine may have 2 cores shared by three nodes, PostgreSQL and this
//! process).
//!
//! Knobs (environment): `SB_BENCH_INSTANCES` (10,000; up to 200,000),
//! `SB_BENCH_SECS`, `SB_BENCH_WARMUP_SECS`, `SB_BENCH_PROBES`, `SB_BENCH_NODES`,
//! `SB_BENCH_CONNS`, `SB_BENCH_BASELINE` (`sqlite`, `postgres` or `none`).
//!
//! Nothing here asserts numbers: it measures and prints.

#[path = "cluster/fleet.rs"]
mod fleet;
#[path = "cluster/pg.rs"]
mod pg;
#[path = "cluster/probes.rs"]
mod probes;
#[path = "cluster/report.rs"]
mod report;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::{Connection, PgConnection};

use fleet::{BeatTally, Beats};
use pg::{DbAges, PgWindow, TableStats};
use probes::{ProbeResult, Samples, ServiceView};
use support::http::{self, Answer, Conn, JSON};
use support::procs::{self, LogInfo, Server};
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
/// The goal: a cluster node's CPU per heartbeat at most this many times a single
/// node's (issue 21).
const CPU_GOAL_RATIO: f64 = 2.0;

fn main() {
    if knobs::asked_for("cluster") {
        knobs::block_on("cluster", 1, run(Config::from_env()));
    }
}

/// What the single-node baseline runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    Sqlite,
    Postgres,
    None,
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
    baseline: Baseline,
}

impl Config {
    fn from_env() -> Self {
        let baseline = match std::env::var("SB_BENCH_BASELINE").as_deref().map(str::trim) {
            Ok("postgres") => Baseline::Postgres,
            Ok("none") => Baseline::None,
            _ => Baseline::Sqlite,
        };
        Config {
            nodes: knobs::count("SB_BENCH_NODES", 3, 2, 5),
            instances: knobs::count("SB_BENCH_INSTANCES", 10_000, 1, 200_000),
            window: Duration::from_secs(knobs::num("SB_BENCH_SECS", 30, 1, 600)),
            warmup: Duration::from_secs(knobs::num("SB_BENCH_WARMUP_SECS", 12, 0, 600)),
            probes: knobs::count("SB_BENCH_PROBES", 100, 0, 1000),
            conns: knobs::count("SB_BENCH_CONNS", 8, 1, 128),
            baseline,
        }
    }

    /// The environment that reproduces this run.
    fn env_line(&self) -> String {
        format!(
            "SB_BENCH_NODES={} SB_BENCH_INSTANCES={} SB_BENCH_SECS={} SB_BENCH_WARMUP_SECS={} \
             SB_BENCH_PROBES={} SB_BENCH_CONNS={} SB_BENCH_BASELINE={}",
            self.nodes,
            self.instances,
            self.window.as_secs(),
            self.warmup.as_secs(),
            self.probes,
            self.conns,
            match self.baseline {
                Baseline::Sqlite => "sqlite",
                Baseline::Postgres => "postgres",
                Baseline::None => "none",
            }
        )
    }
}

/// One measured setup: how many nodes, on which store.
#[derive(Debug, Clone)]
struct Phase {
    /// What the report calls it.
    label: String,
    nodes: usize,
    probes: usize,
    /// The PostgreSQL database, or `None` for SQLite.
    pg_db: Option<String>,
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

async fn run(cfg: Config) -> anyhow::Result<()> {
    println!(
        "cluster bench: {} nodes on one PostgreSQL, {} instances heartbeating every {} s from \
         their registration on, round-robin over the nodes, {} s warm-up, {} s measured, {} \
         propagation probes; baseline {:?}",
        cfg.nodes,
        cfg.instances,
        HEARTBEAT_EVERY.as_secs(),
        cfg.warmup.as_secs(),
        cfg.window.as_secs(),
        cfg.probes,
        cfg.baseline
    );
    let busy = other_load();
    if !busy.is_empty() {
        println!("note: other processes that may load the machine: {busy}");
    }
    let cluster = Phase {
        label: format!("cluster: {} nodes on PostgreSQL", cfg.nodes),
        nodes: cfg.nodes,
        probes: cfg.probes,
        pg_db: None,
    };
    let cluster = in_phase(&cfg, cluster, true).await?;
    report::print_report(&cluster);
    let baseline = match cfg.baseline {
        Baseline::None => None,
        kind => {
            let phase = Phase {
                label: if kind == Baseline::Sqlite {
                    "baseline: 1 node on SQLite (--db sqlite://switchboard.db)".to_owned()
                } else {
                    "baseline: 1 node alone on PostgreSQL".to_owned()
                },
                nodes: 1,
                probes: 0,
                pg_db: None,
            };
            let r = in_phase(&cfg, phase, kind == Baseline::Postgres).await?;
            report::print_report(&r);
            Some(r)
        }
    };
    report::print_comparison(&cluster, baseline.as_ref());
    println!();
    println!(
        "command: flock /tmp/bench.lock env {} cargo bench --bench cluster",
        cfg.env_line()
    );
    Ok(())
}

/// Runs `phase` (on a database of its own when `postgres`) and drops the database after.
async fn in_phase(cfg: &Config, mut phase: Phase, postgres: bool) -> anyhow::Result<Report> {
    println!();
    println!("--- {} ---", phase.label);
    if postgres {
        let db = pg::create_database().await?;
        println!("database: {db} on 127.0.0.1:5432");
        phase.pg_db = Some(db);
    }
    let outcome = tokio::select! {
        r = measure(cfg, &phase) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The nodes are gone by now (stopped, or killed when `measure` was dropped).
    if let Some(db) = &phase.pg_db {
        match pg::drop_database(db).await {
            Ok(()) => println!("database {db} dropped"),
            Err(err) => println!("database {db} NOT dropped: {err:#}"),
        }
    }
    outcome
}

/// Everything measured in one phase, for the report.
struct Report {
    phase: Phase,
    nodes: Vec<NodeReport>,
    registered: usize,
    register_failures: u64,
    register_first_error: Option<String>,
    register_secs: f64,
    converge_secs: Option<f64>,
    window_secs: f64,
    pg: Option<PgReport>,
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

/// What PostgreSQL did over the window.
struct PgReport {
    win: PgWindow,
    notify_queue_start: f64,
    /// Transactions per second of the bench database, per [`SERIES_EVERY`] slice.
    tps_series: Vec<f64>,
    cpu_pct: Option<f64>,
    backends: usize,
    /// At the window's start and end.
    table: Option<(TableStats, TableStats)>,
    db_ages: Option<DbAges>,
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

/// Connections to PostgreSQL for the statistics of one phase.
struct PgWatch {
    admin: PgConnection,
    bench_db: PgConnection,
    db: String,
    backends: Vec<u32>,
}

impl PgWatch {
    async fn open(db: &str) -> anyhow::Result<PgWatch> {
        let mut admin = PgConnection::connect(&format!("{PG_BASE}/postgres"))
            .await
            .context("connecting to the postgres database for statistics")?;
        let bench_db = PgConnection::connect(&format!("{PG_BASE}/{db}"))
            .await
            .context("connecting to the bench database for table statistics")?;
        let backends = pg::pg_backends(&mut admin, db).await.unwrap_or_default();
        Ok(PgWatch {
            admin,
            bench_db,
            db: db.to_owned(),
            backends,
        })
    }

    async fn read(&mut self) -> anyhow::Result<(PgWindow, Option<TableStats>)> {
        let table = pg::table_stats(&mut self.bench_db).await.ok();
        let counters = pg::pg_window_counters(&mut self.admin, &self.db).await?;
        Ok((counters, table))
    }
}

async fn measure(cfg: &Config, phase: &Phase) -> anyhow::Result<Report> {
    let bin = Path::new(env!("CARGO_BIN_EXE_switchboard"));
    let db_url = match &phase.pg_db {
        Some(db) => format!("{PG_BASE}/{db}"),
        None => "sqlite://switchboard.db".to_owned(),
    };
    let clk_tck = sample::clock_ticks();
    let mut nodes = Vec::with_capacity(phase.nodes);
    for i in 0..phase.nodes {
        let node = start_node(bin, &db_url).with_context(|| format!("starting node {i}"))?;
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

    // Register the fleet; each instance heartbeats from its registration's answer on.
    let max_rounds = (REGISTER_DEADLINE + CONVERGE_DEADLINE + cfg.warmup + cfg.window).as_secs()
        / HEARTBEAT_EVERY.as_secs()
        + 2;
    let beats = Beats::start(
        &addrs,
        cfg.conns,
        cfg.instances,
        u32::try_from(max_rounds).unwrap_or(u32::MAX),
    );
    let started = Instant::now();
    let reg = fleet::register_fleet(cfg.instances, cfg.conns, &addrs, &beats).await?;
    let register_secs = started.elapsed().as_secs_f64();
    println!(
        "registered {} of {} instances in {register_secs:.1} s ({:.0}/s, {} failed); \
         heartbeats so far: {} answered 200, {} answered 404",
        reg.registered,
        cfg.instances,
        reg.registered as f64 / register_secs.max(1e-9),
        reg.failures,
        beats
            .stats
            .iter()
            .map(|s| s.total().status(200))
            .sum::<u64>(),
        beats
            .stats
            .iter()
            .map(|s| s.total().status(404))
            .sum::<u64>(),
    );
    if reg.registered == 0 {
        bail!(
            "no instance registered; first error: {}",
            reg.first_error.as_deref().unwrap_or("?")
        );
    }
    let converge_secs = fleet::converge(&addrs, reg.registered as u64, CONVERGE_DEADLINE).await;
    match converge_secs {
        Some(s) => println!(
            "every node lists all {} as live {s:.2} s later",
            reg.registered
        ),
        None => println!(
            "WARNING: not every node listed all {} as live within {CONVERGE_DEADLINE:?}",
            reg.registered
        ),
    }
    for n in &mut nodes {
        n.check_alive()?;
    }
    tokio::time::sleep(cfg.warmup).await;
    for n in &mut nodes {
        n.check_alive()?;
    }

    let mut watch = match &phase.pg_db {
        Some(db) => Some(PgWatch::open(db).await?),
        None => None,
    };
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();

    // Window start.
    let pg_before = match watch.as_mut() {
        Some(w) => Some(w.read().await?),
        None => None,
    };
    let before = Ticks::now(&pids);
    let window_start = tokio::time::Instant::now();
    beats.measuring.store(true, Ordering::Relaxed);
    let window_end = window_start + cfg.window;
    let sampler = tokio::spawn(probes::sample_services(addrs.clone(), window_end));
    let series = phase
        .pg_db
        .clone()
        .map(|db| tokio::spawn(pg::pg_series(db, window_start, window_end)));
    let prober = tokio::spawn(probes::run_probes(
        addrs.clone(),
        phase.probes,
        window_start,
        window_end,
    ));

    tokio::time::sleep_until(window_end).await;

    // Window end.
    beats.measuring.store(false, Ordering::Relaxed);
    let window_secs = window_start.elapsed().as_secs_f64();
    let after = Ticks::now(&pids);
    let pg_after = match watch.as_mut() {
        Some(w) => Some(w.read().await?),
        None => None,
    };
    let rss_end: Vec<u64> = pids
        .iter()
        .map(|&p| sample::rss_kib(p).unwrap_or(0))
        .collect();

    let samples = sampler.await.unwrap_or_default();
    let tps_series = match series {
        Some(s) => s.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let probes = prober.await.unwrap_or_default();

    // Checks with heartbeats still running.
    let mut end_views = Vec::new();
    for &addr in &addrs {
        end_views.push(probes::services_view(addr).await.ok());
    }
    let db_ages = match watch.as_mut() {
        Some(w) => pg::db_ages(&mut w.bench_db).await.ok(),
        None => None,
    };
    let backends = watch
        .as_ref()
        .map(|w| w.backends.clone())
        .unwrap_or_default();
    if let Some(w) = watch.take() {
        let _ = w.admin.close().await;
        let _ = w.bench_db.close().await;
    }

    for n in &mut nodes {
        n.mark_load_stopped();
    }
    let stats = std::sync::Arc::clone(&beats.stats);
    beats.stop(REQUEST_TIMEOUT).await;

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
        let window = stats[i].window();
        let total = stats[i].total();
        let cpu = after.nodes[i].saturating_sub(before.nodes[i]);
        let answered = window.tally.answered;
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
            stop_note: stop_notes.get(i).cloned().unwrap_or_default(),
            log: node.log_info(MAX_LOG_LINES),
        });
    }
    let (max_lag, late) = stats.iter().fold((Duration::ZERO, 0), |(m, l), s| {
        let t = s.window();
        (m.max(t.max_lag), l + t.late)
    });
    let planned =
        (reg.registered as f64 * window_secs / HEARTBEAT_EVERY.as_secs_f64()).round() as u64;
    let pg = pg_before
        .zip(pg_after)
        .map(|((wb, tb), (wa, ta))| PgReport {
            win: wa.minus(&wb),
            notify_queue_start: wb.notify_queue,
            tps_series,
            cpu_pct: (!backends.is_empty()).then(|| pct(pg_cpu_ticks)),
            backends: backends.len(),
            table: tb.zip(ta),
            db_ages,
        });
    Ok(Report {
        phase: phase.clone(),
        nodes: node_reports,
        registered: reg.registered,
        register_failures: reg.failures,
        register_first_error: reg.first_error,
        register_secs,
        converge_secs,
        window_secs,
        pg,
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
