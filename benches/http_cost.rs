//! HTTP cost benchmark (issue 21): what a registry request costs the server, against
//! nginx's `return 200` under the same client, and what 100,000 heartbeating
//! instances cost; ratios against baselines measured in the same run, loopback only.
//!
//! ```text
//! cargo bench --bench http_cost
//! SB_BENCH_SIZES=1000,10000 SB_BENCH_SCALE_BEATS=1000000 cargo bench --bench http_cost
//! ```
//!
//! Part 1, CPU per request. The load generator is `wrk -t1 -c16 -d<SB_BENCH_SECS>s
//! --latency` for every phase, its figures printed by a Lua `done` hook; server CPU per
//! request is utime+stime of the server's PID from `/proc` (before wrk starts, after it
//! ends plus 1.5 s, so the 1 s heartbeat flush is charged to the phase) over the
//! requests wrk counted; after a heartbeat phase the window runs on until the server
//! has written no heartbeat to its store for 9.5 s (`wrk::STORE_QUIET`), as a beat
//! may wait 8 s to be written and those writes belong to the heartbeats, not to the
//! `/servers` phase that follows. Phases:
//! - nginx `return 200 "ok\n"`, one process (`daemon off; master_process off;
//!   worker_processes 1;`, `access_log off;`, `keepalive_requests` raised so that it,
//!   like switchboard, keeps every connection), prefix, pid and logs in a temp dir;
//! - the release switchboard binary (`serve --no-forward --db sqlite://<tmp>/sb.db`,
//!   the SQLite file as a new user runs it): `GET /healthz`;
//! - at each size of `SB_BENCH_SIZES` (one service `bench`, registered over several
//!   connections at once and timed: each registration waits for its fsync), for each
//!   load shape, `uneven` (instance `i` at `i % 997` connections) and `scale-out` (the
//!   last tenth registered at 0, empty newcomers, the rest at 1,000), set by one
//!   heartbeat per instance first: heartbeats (a generated script cycling over every
//!   instance, `PUT /v1/services/bench/instances/{id}/heartbeat`, `X-Lease`, body
//!   `{"connections": N}` with the shape's N, so a heartbeat repeats its instance's
//!   count), then `GET /servers?service=bench&limit=5`.
//!
//! Part 2, scale: `SB_BENCH_SCALE_SIZE` instances (uneven) heartbeating at
//! `SB_BENCH_SCALE_RATE` per second, paced by the bench's own client
//! (`benches/support/http.rs`) over `SB_BENCH_SCALE_CONNS` keep-alive connections, each
//! at its share (a send over 2 ms after its slot counts as late), while `/servers` is
//! sampled `SB_BENCH_SCALE_READS` times a second on a connection and thread of its own:
//! heartbeats/s achieved, server CPU per heartbeat, `/servers` p50/p99, and RSS after
//! registration and after the heartbeats as KiB per instance over the idle empty server.
//!
//! Goals, printed beside their figures as met or MISSED, never asserted: `/healthz` CPU
//! ≤ 1.2× nginx's; heartbeat and `/servers` CPU at 1k ≤ 1.5× nginx's; the kept-alive
//! `/servers` rate ≥ 0.6× nginx's (judged at every size); heartbeat CPU at 100k uneven
//! ≤ 1.2× that at 1k uneven; ≥ 60,000 heartbeats/s at 100k; in the scale phase
//! `/servers` p99 < 5 ms and RSS ≤ 1 KiB per instance after the heartbeats.
//!
//! Tools: nothing is installed at run time. Without nginx its phase is skipped (no
//! ratios); without wrk all of part 1 is (`apt-get install -y nginx-light wrk`).
//!
//! Knobs (environment): `SB_BENCH_BIN` (the switchboard binary to measure, by default
//! this tree's release build: an earlier commit's, for before and after), `SB_BENCH_SECS` (seconds per wrk phase, 10),
//! `SB_BENCH_SIZES` (`1000,10000,100000`), `SB_BENCH_REGISTER_CONNS` (16),
//! `SB_BENCH_SCALE_SIZE` (100000), `SB_BENCH_SCALE_BEATS` (heartbeats in all,
//! 10,000,000 = 500 s at 20k/s; 0 skips part 2), `SB_BENCH_SCALE_RATE` (20000),
//! `SB_BENCH_SCALE_CONNS` (8), `SB_BENCH_SCALE_READS` (200). With the defaults a run
//! took 13 minutes on the 2-core bench machine: 100,000 registrations at ~1,100/s
//! (85 s), 14 wrk phases of 10 s plus settle, the scale phase's 500 s.
//!
//! This file holds the knobs and the order of the run; `http_cost/nginx.rs` the
//! baseline's process, `http_cost/wrk.rs` a wrk phase, `http_cost/instances.rs`
//! registration and load shapes, `http_cost/scale.rs` part 2, `http_cost/tables.rs`
//! the report and its goals.

#[path = "http_cost/instances.rs"]
mod instances;
#[path = "http_cost/nginx.rs"]
mod nginx;
#[path = "http_cost/scale.rs"]
mod scale;
mod support;
#[path = "http_cost/tables.rs"]
mod tables;
#[path = "http_cost/wrk.rs"]
mod wrk;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use instances::{Fleet, Shape};
use scale::{ScaleConfig, ScaleResult};
use support::procs::{self, LogInfo};
use support::{http, knobs, sample};
use wrk::{Measured, Wrk};

/// The service every instance is registered in.
const SERVICE: &str = "bench";
/// Longest wait for one request of the bench's own client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a starting server is asked whether it answers.
const POLL: Duration = Duration::from_millis(50);
/// Longest registration of one size's instances.
const REGISTER_LIMIT: Duration = Duration::from_secs(1_800);
/// Longest wait for a server to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle time over which the server's background CPU is read at each size.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// Lines of server warnings and errors kept for the report.
const MAX_LOG_LINES: usize = 8;

fn main() {
    if !knobs::asked_for("http_cost") {
        return;
    }
    let cfg = Config::from_env();
    knobs::block_on("http_cost", 1, run(cfg));
}

/// Settings from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub secs: u64,
    pub sizes: Vec<usize>,
    pub register_conns: usize,
    /// `None` when `SB_BENCH_SCALE_BEATS=0`.
    pub scale: Option<ScaleConfig>,
}

impl Config {
    fn from_env() -> Config {
        let mut sizes = knobs::sizes("SB_BENCH_SIZES", &[1_000, 10_000, 100_000], 1_000_000);
        sizes.sort_unstable();
        sizes.dedup();
        let scale = ScaleConfig {
            size: knobs::count("SB_BENCH_SCALE_SIZE", 100_000, 1, 1_000_000),
            beats: knobs::num("SB_BENCH_SCALE_BEATS", 10_000_000, 0, 1_000_000_000),
            rate: knobs::num("SB_BENCH_SCALE_RATE", 20_000, 1, 1_000_000),
            conns: knobs::count("SB_BENCH_SCALE_CONNS", 8, 1, 256),
            reads_per_sec: knobs::num("SB_BENCH_SCALE_READS", 200, 1, 10_000),
        };
        Config {
            secs: knobs::num("SB_BENCH_SECS", 10, 1, 600),
            sizes,
            register_conns: knobs::count("SB_BENCH_REGISTER_CONNS", 16, 1, 256),
            scale: (scale.beats > 0).then_some(scale),
        }
    }

    /// The sizes the run registers, in order: each of part 1's, and part 2's.
    fn stops(&self) -> Vec<usize> {
        let mut stops = self.sizes.clone();
        stops.extend(self.scale.as_ref().map(|s| s.size));
        stops.sort_unstable();
        stops.dedup();
        stops
    }
}

/// Everything measured, for the report.
#[derive(Debug, Default)]
pub struct Results {
    pub nginx: Option<Measured>,
    pub healthz: Option<Measured>,
    pub rss_idle_kib: u64,
    pub sizes: Vec<SizeRun>,
    pub scale: Option<ScaleRun>,
    pub register_failed: usize,
    pub register_error: Option<String>,
    pub log: LogInfo,
    pub stop_note: String,
}

/// One size's registration and phases.
#[derive(Debug)]
pub struct SizeRun {
    pub n: usize,
    /// Registering the instances added at this size.
    pub added: usize,
    pub register_took: Duration,
    /// After registering and one heartbeat each.
    pub rss_kib: u64,
    /// The server's CPU while nothing asks it anything.
    pub idle_pct: f64,
    pub shapes: Vec<ShapeRun>,
}

/// One load shape's phases at one size.
#[derive(Debug)]
pub struct ShapeRun {
    pub shape: Shape,
    pub load_took: Duration,
    pub load_failed: usize,
    pub beats: Measured,
    pub servers: Measured,
}

/// Part 2 and the RSS around it.
#[derive(Debug)]
pub struct ScaleRun {
    pub cfg: ScaleConfig,
    pub rss_registered_kib: u64,
    pub rss_after_kib: u64,
    pub result: ScaleResult,
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let run_started = Instant::now();
    let clk_tck = sample::clock_ticks();
    // SB_BENCH_BIN: another build (an earlier commit's) measured by the same bench.
    let sb_bin = knobs::switchboard_bin();
    let nginx_bin = support::nginx::find_tool("nginx");
    let wrk_bin = support::nginx::find_tool("wrk");
    println!("http_cost bench: loopback only (127.0.0.1); CLK_TCK {clk_tck}");
    println!("  switchboard: {}", sb_bin.display());
    let missing = "install it with `apt-get install -y nginx-light wrk`";
    match &nginx_bin {
        Some(b) => println!(
            "  nginx:       {} ({})",
            b.display(),
            support::nginx::version(b, &["-v"])
        ),
        None => println!("  nginx:       NOT FOUND: its phase is skipped, no ratios ({missing})"),
    }
    match &wrk_bin {
        Some(b) => println!(
            "  wrk:         {} ({})",
            b.display(),
            support::nginx::version(b, &["-v"])
        ),
        None => println!("  wrk:         NOT FOUND: part 1 is skipped ({missing})"),
    }
    println!(
        "  part 1: wrk -t{} -c{} -d{}s --latency; sizes {:?}; part 2: {}",
        wrk::THREADS,
        wrk::CONNS,
        cfg.secs,
        cfg.sizes,
        cfg.scale.as_ref().map_or_else(
            || "skipped (SB_BENCH_SCALE_BEATS=0)".to_owned(),
            |s| format!(
                "{} instances, {} heartbeats at {}/s over {} connections (~{:.0} s), {} /servers/s",
                s.size,
                s.beats,
                s.rate,
                s.conns,
                s.planned().as_secs_f64(),
                s.reads_per_sec
            )
        )
    );
    let wrk = wrk_bin.map(|b| Wrk::new(b, cfg.secs)).transpose()?;
    let get_script = wrk.as_ref().map(Wrk::get_script).transpose()?;

    let mut results = Results::default();
    if let (Some(wrk), Some(script), Some(bin)) = (&wrk, &get_script, &nginx_bin) {
        let mut server = nginx::start(bin).await.context("starting nginx")?;
        let url = format!("http://{}/", server.addr);
        println!("\nnginx: pid {} on {}", server.pid, server.addr);
        let m = wrk.run(script, &url, server.pid, clk_tck, None).await?;
        tables::print_phase("nginx return 200", &m);
        server.check_alive()?;
        println!("nginx: {}", server.stop(STOP_TIMEOUT));
        results.nginx = Some(m);
    }

    let (mut server, addr) = start_switchboard(&sb_bin)?;
    let probe = http::request("GET", "/healthz", addr, &[], b"");
    http::wait_ready(addr, &probe, POLL).await?;
    println!(
        "\nswitchboard: pid {} on {addr}, data in {}",
        server.pid,
        server.dir.path().display()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.rss_idle_kib = sample::rss_kib(server.pid)?;
    if let (Some(wrk), Some(script)) = (&wrk, &get_script) {
        let url = format!("http://{addr}/healthz");
        let m = wrk.run(script, &url, server.pid, clk_tck, None).await?;
        tables::print_phase("switchboard /healthz", &m);
        results.healthz = Some(m);
    }

    let mut fleet = Fleet::new(addr);
    for n in cfg.stops() {
        let before = fleet.list.len();
        println!("\n== {n} instances ==");
        let took = fleet
            .register_up_to(n, cfg.register_conns, REGISTER_LIMIT)
            .await?;
        let added = fleet.list.len() - before;
        println!(
            "registered {added} more in {:.1} s ({:.0}/s over {} connections); {} in all, {} failed",
            took.as_secs_f64(),
            added as f64 / took.as_secs_f64().max(1e-9),
            cfg.register_conns,
            fleet.list.len(),
            fleet.failed
        );
        server.check_alive()?;
        let (load_took, load_failed) = fleet.set_loads(Shape::Uneven, cfg.register_conns).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_kib = sample::rss_kib(server.pid)?;
        let idle_pct = idle_cpu(server.pid, clk_tck).await?;
        println!(
            "RSS {rss_kib} KiB ({:.2} KiB/instance over the idle empty server's {} KiB); idle CPU {idle_pct:.1}% of a core",
            (rss_kib as f64 - results.rss_idle_kib as f64) / fleet.list.len() as f64,
            results.rss_idle_kib
        );
        let mut size = SizeRun {
            n,
            added,
            register_took: took,
            rss_kib,
            idle_pct,
            shapes: Vec::new(),
        };
        if let (Some(wrk), Some(script), true) = (&wrk, &get_script, cfg.sizes.contains(&n)) {
            for shape in Shape::ALL {
                let (load_took, load_failed) = match shape {
                    Shape::Uneven => (load_took, load_failed),
                    _ => fleet.set_loads(shape, cfg.register_conns).await?,
                };
                let run = shape_phases(&fleet, shape, wrk, script, server.pid, clk_tck).await?;
                size.shapes.push(ShapeRun {
                    load_took,
                    load_failed,
                    ..run
                });
                server.check_alive()?;
            }
        }
        if let Some(scale_cfg) = cfg.scale.as_ref().filter(|s| s.size == n) {
            if !size.shapes.is_empty() {
                fleet.set_loads(Shape::Uneven, cfg.register_conns).await?;
            }
            println!(
                "scale: {} heartbeats at {}/s (~{:.0} s)",
                scale_cfg.beats,
                scale_cfg.rate,
                scale_cfg.planned().as_secs_f64()
            );
            let result = scale::run(&fleet, scale_cfg, server.pid, clk_tck).await?;
            server.check_alive()?;
            results.scale = Some(ScaleRun {
                cfg: scale_cfg.clone(),
                rss_registered_kib: rss_kib,
                rss_after_kib: sample::rss_kib(server.pid)?,
                result,
            });
        }
        results.sizes.push(size);
    }

    server.mark_load_stopped();
    results.register_failed = fleet.failed;
    results.register_error = fleet.first_error.clone();
    results.stop_note = server.stop(STOP_TIMEOUT);
    results.log = server.log_info(MAX_LOG_LINES);
    tables::print_report(&cfg, &results, run_started.elapsed());
    Ok(())
}

/// At one size and shape (loads already set): heartbeats, then `/servers?limit=5`.
async fn shape_phases(
    fleet: &Fleet,
    shape: Shape,
    wrk: &Wrk,
    get_script: &Path,
    pid: u32,
    clk_tck: u64,
) -> anyhow::Result<ShapeRun> {
    let n = fleet.list.len();
    let label = format!("{} {}", tables::size_name(n), shape.name());
    check_servers(fleet.addr, shape).await?;
    let beats = fleet
        .list
        .iter()
        .enumerate()
        .map(|(i, inst)| (inst.id.clone(), inst.lease.clone(), shape.connections(i, n)));
    let script = wrk.heartbeat_script(&format!("beats-{n}-{}", shape.name()), beats)?;
    let url = format!("http://{}/", fleet.addr);
    let beats = wrk
        .run(&script, &url, pid, clk_tck, Some(fleet.addr))
        .await?;
    tables::print_phase(&format!("{label} heartbeat"), &beats);
    let url = format!("http://{}/servers?service={SERVICE}&limit=5", fleet.addr);
    let servers = wrk.run(get_script, &url, pid, clk_tck, None).await?;
    tables::print_phase(&format!("{label} /servers"), &servers);
    Ok(ShapeRun {
        shape,
        load_took: Duration::ZERO,
        load_failed: 0,
        beats,
        servers,
    })
}

/// Fails unless `/servers?limit=5` answers 200 with 5 servers, the first as `shape`
/// would rank it (least loaded: 0 connections).
async fn check_servers(addr: SocketAddr, shape: Shape) -> anyhow::Result<()> {
    let path = format!("/servers?service={SERVICE}&limit=5");
    let req = http::request("GET", &path, addr, &[], b"");
    let answer = http::one_shot(addr, &req, REQUEST_TIMEOUT).await?;
    let body: serde_json::Value = serde_json::from_slice(&answer.body).with_context(|| {
        format!(
            "/servers answered {}",
            String::from_utf8_lossy(&answer.body)
        )
    })?;
    let servers = body.get("servers").and_then(|s| s.as_array());
    let first = servers
        .and_then(|s| s.first())
        .and_then(|s| s.get("connections"));
    if answer.status != 200 || servers.map(Vec::len) != Some(5) {
        bail!("/servers answered {}: {body}", answer.status);
    }
    println!(
        "/servers ({}): 5 servers, the first at {} connections",
        shape.name(),
        first.map_or_else(|| "?".to_owned(), ToString::to_string)
    );
    Ok(())
}

/// The server's CPU over [`IDLE_WINDOW`] with no request, in % of one core.
async fn idle_cpu(pid: u32, clk_tck: u64) -> anyhow::Result<f64> {
    let before = sample::cpu_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let ticks = sample::cpu_ticks(pid)?.saturating_sub(before);
    Ok(wrk::core_pct(ticks, started.elapsed(), clk_tck))
}

/// The release binary on a SQLite file in a temp dir, as a new user runs it.
fn start_switchboard(bin: &Path) -> anyhow::Result<(procs::Server, SocketAddr)> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = format!("sqlite://{}/sb.db", dir.path().display());
    let args = ["--no-forward", "--db", &db];
    let (server, _) =
        procs::start_switchboard(Command::new(bin), dir, &args, &[], http::START_TIMEOUT)?;
    let addr = server.addr;
    Ok((server, addr))
}
