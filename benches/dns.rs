//! DNS benchmark: the registry's load-aware DNS (SPEC 8) against its own
//! `GET /servers`, same server process, same service, one run, loopback only.
//!
//! ```text
//! cargo bench --bench dns
//! ```
//!
//! One `switchboard serve --dns 127.0.0.1:0` (SQLite in a temporary directory, no
//! forward listener), `SB_BENCH_INSTANCES` instances (default 10) registered in the
//! service `bench` at IPv4 literals. Then, each for `SB_BENCH_SECS` (default 5), a
//! closed loop of `SB_BENCH_CONNS` clients (default 32) on one client thread:
//!
//! - (a) DNS over UDP: `A bench.<zone>`, each client its own socket, a new id per query;
//! - (b) DNS over TCP: the same query on one kept-open connection per client;
//! - (c) HTTP: `GET /servers?service=bench` on one keep-alive connection per client.
//!
//! Each answer is checked (the id, `NOERROR`, 3 records; HTTP 200); a wrong one counts
//! as an error. Server CPU per query is utime+stime of the server PID from
//! `/proc/PID/stat` over the phase, divided by the answers, so it does not depend on
//! the client; queries/s do (the client shares the 2 cores). Every answer counts a
//! hand-out, as a real lookup does.
//!
//! Then the comparison with NSD (Debian's `nsd` and `dnsperf`, skipped with a note when
//! either is missing; `SB_BENCH_NSD=0` skips it too): NSD on another loopback port,
//! one server process per core, rate limiting off, a zone of the same shape (SOA, NS,
//! and as many A records at `bench.<zone>` as our answer carries). dnsperf (`-c
//! SB_BENCH_DNSPERF_CLIENTS` default 16, `-T SB_BENCH_DNSPERF_THREADS` default 1, `-q
//! 256`, a query given up after 1 s) asks `A bench.<zone>` of each, in the same run:
//! first as fast as each answers (saturation), then both at `SB_BENCH_DNS_RATE_PCT`
//! (default 50) % of the rate we reached. For each: answers/s, server CPU per answer
//! (utime+stime of the server's processes from `/proc/PID/stat`), answers per CPU
//! second and its ratio to NSD's, queries dnsperf lost, the kernel's drops on the
//! server's sockets (`/proc/net/udp`), and for us the drops the server counted
//! itself (`switchboard_dns_dropped_total`).
//!
//! Nothing here asserts a number: the tables are printed, with the ratios.

mod support;

#[path = "dns/dnsperf.rs"]
mod dnsperf;
#[path = "dns/nsd.rs"]
mod nsd;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use support::http::{self, Conn, JSON};
use support::procs;
use support::report::loadavg;
use support::{knobs, sample};

const SERVICE: &str = "bench";
const ZONE: &str = "sb.bench.";
/// One answer may take this long before it counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

fn main() {
    if !knobs::asked_for("dns") {
        return;
    }
    knobs::block_on("dns", 1, run());
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    answers: u64,
    errors: u64,
    secs: f64,
    server_cpu_secs: f64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.answers as f64 / self.secs
    }

    fn cpu_us(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.answers.max(1) as f64
    }
}

async fn run() -> anyhow::Result<()> {
    let secs = knobs::num("SB_BENCH_SECS", 5, 1, 60);
    let conns = knobs::count("SB_BENCH_CONNS", 32, 1, 1024);
    let instances = knobs::count("SB_BENCH_INSTANCES", 10, 1, 1000);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, format!("[dns]\ndomain = \"{ZONE}\"\n"))?;
    let config = config.display().to_string();
    let cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    let (mut server, addrs) = procs::start_switchboard(
        cmd,
        tempfile::tempdir()?,
        &[
            "--no-forward",
            "--db",
            &db,
            "--config",
            &config,
            "--dns",
            "127.0.0.1:0",
        ],
        &["dns listening on "],
        Duration::from_secs(30),
    )?;
    let (http_addr, dns_addr) = (addrs[0], addrs[1]);
    println!(
        "dns bench: {instances} instances, {conns} clients x {secs} s per phase, one client thread; \
         cpus {}; loadavg {}",
        std::thread::available_parallelism().map_or(1, usize::from),
        loadavg()
    );
    for i in 0..instances {
        let body = format!(
            "{{\"address\":\"10.0.{}.{}:1883\",\"ttl_secs\":300}}",
            i / 250,
            i % 250 + 1
        );
        let path = format!("/v1/services/{SERVICE}/instances");
        let req = http::request("POST", &path, http_addr, &[JSON], body.as_bytes());
        let answer = http::one_shot(http_addr, &req, Duration::from_secs(5)).await?;
        if answer.status != 201 {
            bail!("registration answered {}", answer.status);
        }
    }
    let duration = Duration::from_secs(secs);
    let clk_tck = sample::clock_ticks() as f64;
    let mut phases = Vec::new();
    for name in ["dns udp", "dns tcp", "GET /servers"] {
        let before = sample::cpu_ticks(server.pid)?;
        let started = Instant::now();
        let (answers, errors) = match name {
            "dns udp" => load(conns, duration, |stop| udp_client(dns_addr, stop)).await,
            "dns tcp" => load(conns, duration, |stop| tcp_client(dns_addr, stop)).await,
            _ => load(conns, duration, |stop| http_client(http_addr, stop)).await,
        };
        let elapsed = started.elapsed().as_secs_f64();
        let after = sample::cpu_ticks(server.pid)?;
        server.check_alive()?;
        phases.push(Phase {
            name,
            answers,
            errors,
            secs: elapsed,
            server_cpu_secs: (after - before) as f64 / clk_tck,
        });
    }
    let http_phase = phases.last().map_or(1.0, Phase::per_sec);
    let http_cpu = phases.last().map_or(1.0, Phase::cpu_us);
    println!(
        "\n{:<14} {:>12} {:>8} {:>18} {:>12} {:>14}",
        "phase", "answers/s", "errors", "server CPU us/ans", "x /servers", "CPU x /servers"
    );
    for p in &phases {
        println!(
            "{:<14} {:>12.0} {:>8} {:>18.1} {:>12.2} {:>14.2}",
            p.name,
            p.per_sec(),
            p.errors,
            p.cpu_us(),
            p.per_sec() / http_phase,
            p.cpu_us() / http_cpu
        );
    }
    if knobs::is_set("SB_BENCH_NSD") && !knobs::flag("SB_BENCH_NSD") {
        println!("\nNSD comparison: skipped (SB_BENCH_NSD)");
    } else if !nsd::available() || !dnsperf::available() {
        println!("\nNSD comparison: skipped (apt-get install nsd dnsperf)");
    } else {
        versus_nsd(secs, dns_addr, http_addr, server.pid).await?;
        server.check_alive()?;
    }
    let log = server.stop(Duration::from_secs(10));
    println!("\nserver: {log}; loadavg at the end {}", loadavg());
    Ok(())
}

/// Runs `conns` clients made by `client` until `duration` passes; answers and errors.
async fn load<F, Fut>(conns: usize, duration: Duration, client: F) -> (u64, u64)
where
    F: Fn(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = (u64, u64)> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = (0..conns)
        .map(|_| local.spawn_local(client(Arc::clone(&stop))))
        .collect();
    let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sum = Arc::clone(&totals);
    local
        .run_until(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
            for h in handles {
                if let Ok((ok, bad)) = h.await {
                    sum.0.fetch_add(ok, Ordering::Relaxed);
                    sum.1.fetch_add(bad, Ordering::Relaxed);
                }
            }
        })
        .await;
    (
        totals.0.load(Ordering::Relaxed),
        totals.1.load(Ordering::Relaxed),
    )
}

fn query(id: u16) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = id;
    let name = Name::from_ascii(format!("{SERVICE}.{ZONE}")).expect("a valid name");
    q.add_query(Query::query(name, RecordType::A));
    q.to_vec().expect("a query encodes")
}

fn good_dns(bytes: &[u8], id: u16) -> bool {
    Message::from_vec(bytes).is_ok_and(|m| {
        m.metadata.id == id
            && m.metadata.response_code == ResponseCode::NoError
            && m.answers.len() == 3
    })
}

async fn udp_client(dns: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return (0, 1);
    };
    if socket.connect(dns).await.is_err() {
        return (0, 1);
    }
    let (mut ok, mut bad) = (0, 0);
    let mut buf = vec![0u8; 1500];
    let mut id: u16 = rand_id();
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        if socket.send(&query(id)).await.is_err() {
            bad += 1;
            continue;
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if good_dns(&buf[..n], id) => ok += 1,
            _ => bad += 1,
        }
    }
    (ok, bad)
}

async fn tcp_client(dns: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut ok, mut bad) = (0, 0);
    let mut stream: Option<TcpStream> = None;
    let mut id: u16 = rand_id();
    let mut body = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        let wire = query(id);
        let attempt = async {
            if stream.is_none() {
                let s = TcpStream::connect(dns).await?;
                s.set_nodelay(true)?;
                stream = Some(s);
            }
            let s = stream.as_mut().context("connected")?;
            let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&wire);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            body.resize(usize::from(u16::from_be_bytes(len)), 0);
            s.read_exact(&mut body).await?;
            anyhow::Ok(good_dns(&body, id))
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, attempt).await {
            Ok(Ok(true)) => ok += 1,
            _ => {
                bad += 1;
                stream = None;
            }
        }
    }
    (ok, bad)
}

async fn http_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let req = http::request(
        "GET",
        &format!("/servers?service={SERVICE}"),
        addr,
        &[],
        b"",
    );
    let (mut ok, mut bad) = (0, 0);
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        match http::call(&mut conn, addr, &req, false, ANSWER_TIMEOUT).await {
            Ok(a) if a.status == 200 => ok += 1,
            _ => bad += 1,
        }
    }
    (ok, bad)
}

fn rand_id() -> u16 {
    rand::random()
}

/// Answers our server gives to `A bench.<zone>` (the instances registered, at most the
/// zone's default `answers`).
const ANSWERS: usize = 3;

/// One row of the NSD table.
struct Row {
    system: &'static str,
    load: &'static str,
    offered: Option<u64>,
    run: dnsperf::Run,
    /// What our server counted as dropped over the run (`None` for NSD).
    counted: Option<u64>,
}

/// dnsperf against us and against NSD, at saturation and below (see the module doc).
async fn versus_nsd(
    secs: u64,
    ours: SocketAddr,
    http_addr: SocketAddr,
    our_pid: u32,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut nsd = nsd::start(ZONE, SERVICE, ANSWERS, cores)?;
    let dir = tempfile::tempdir()?;
    let queries = dir.path().join("queries");
    dnsperf::query_file(&queries, &format!("{SERVICE}.{ZONE}"), "A", 1000)?;
    let mut load = dnsperf::Load {
        secs,
        clients: knobs::count("SB_BENCH_DNSPERF_CLIENTS", 16, 1, 256),
        threads: knobs::count("SB_BENCH_DNSPERF_THREADS", 1, 1, 16),
        outstanding: 256,
        qps: None,
    };
    println!(
        "\nvs NSD: dnsperf -c {} -T {} -q {} -t 1 -l {secs}, A {SERVICE}.{ZONE}; NSD {} servers (pid {}), \
         ours pid {our_pid}; loadavg {}",
        load.clients,
        load.threads,
        load.outstanding,
        cores,
        nsd.pid,
        loadavg()
    );
    let mut rows = Vec::new();
    let ours_at_max = measure_ours(ours, http_addr, our_pid, &queries, load).await?;
    let max = ours_at_max.run.qps;
    rows.push(ours_at_max);
    rows.push(measure_nsd(&mut nsd, &queries, load)?);
    let pct = knobs::num("SB_BENCH_DNS_RATE_PCT", 50, 1, 100);
    let below = ((max * pct as f64 / 100.0) as u64).max(1);
    load.qps = Some(below);
    let mut row = measure_ours(ours, http_addr, our_pid, &queries, load).await?;
    row.load = "below";
    rows.push(row);
    let mut row = measure_nsd(&mut nsd, &queries, load)?;
    row.load = "below";
    rows.push(row);
    nsd.check_alive()?;
    let stopped = nsd.stop(Duration::from_secs(10));
    print_versus(&rows, pct);
    println!("nsd: {stopped}");
    Ok(())
}

async fn measure_ours(
    ours: SocketAddr,
    http_addr: SocketAddr,
    pid: u32,
    queries: &std::path::Path,
    load: dnsperf::Load,
) -> anyhow::Result<Row> {
    let before = dropped_counted(http_addr).await;
    // Blocking is fine: the runtime has nothing else to run meanwhile.
    let run = dnsperf::run(ours, queries, load, pid)?;
    let after = dropped_counted(http_addr).await;
    Ok(Row {
        system: "switchboard",
        load: "saturation",
        offered: load.qps,
        run,
        counted: Some(after.saturating_sub(before)),
    })
}

fn measure_nsd(
    nsd: &mut support::procs::Server,
    queries: &std::path::Path,
    load: dnsperf::Load,
) -> anyhow::Result<Row> {
    let run = dnsperf::run(nsd.addr, queries, load, nsd.pid)?;
    Ok(Row {
        system: "nsd",
        load: "saturation",
        offered: load.qps,
        run,
        counted: None,
    })
}

/// The sum of `switchboard_dns_dropped_total` over its labels (0 when absent).
async fn dropped_counted(http_addr: SocketAddr) -> u64 {
    let req = http::request("GET", "/metrics", http_addr, &[], b"");
    let Ok(answer) = http::one_shot(http_addr, &req, Duration::from_secs(5)).await else {
        return 0;
    };
    String::from_utf8_lossy(&answer.body)
        .lines()
        .filter(|l| l.starts_with("switchboard_dns_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn print_versus(rows: &[Row], pct: u64) {
    println!(
        "\n{:<12} {:<11} {:>9} {:>10} {:>9} {:>11} {:>8} {:>8} {:>16} {:>8} {:>8}",
        "server",
        "load",
        "offered",
        "answers/s",
        "CPU us/a",
        "ans/CPU-s",
        "x NSD",
        "q/s xNSD",
        "lost/sent",
        "k.drops",
        "counted"
    );
    for row in rows {
        let nsd = rows
            .iter()
            .find(|r| r.system == "nsd" && r.load == row.load)
            .map(|r| &r.run);
        let ratio = |f: fn(&dnsperf::Run) -> f64| nsd.map_or(f64::NAN, |n| f(&row.run) / f(n));
        println!(
            "{:<12} {:<11} {:>9} {:>10.0} {:>9.2} {:>11.0} {:>8.2} {:>8.2} {:>16} {:>8} {:>8}",
            row.system,
            row.load,
            row.offered.map_or("max".to_owned(), |q| q.to_string()),
            row.run.qps,
            row.run.cpu_us(),
            row.run.per_cpu_sec(),
            ratio(dnsperf::Run::per_cpu_sec),
            ratio(|r| r.qps),
            format!("{}/{}", row.run.lost, row.run.sent),
            row.run.kernel_drops,
            row.counted.map_or("-".to_owned(), |c| c.to_string()),
        );
    }
    let machine: u64 = rows.iter().map(|r| r.run.machine_rcvbuf_errors).sum();
    println!(
        "(lost: dnsperf's count; k.drops: /proc/net/udp drops on the server's port; counted: \
         switchboard_dns_dropped_total; machine-wide RcvbufErrors over all four runs: {machine})"
    );
    let ours = |load: &str| {
        rows.iter()
            .find(|r| r.system == "switchboard" && r.load == load)
    };
    let nsd = |load: &str| rows.iter().find(|r| r.system == "nsd" && r.load == load);
    if let (Some(o), Some(n)) = (ours("saturation"), nsd("saturation")) {
        let ratio = o.run.per_cpu_sec() / n.run.per_cpu_sec();
        println!(
            "goal: answers per CPU second >= 0.5 x NSD's: {ratio:.2} x ({})",
            if ratio >= 0.5 { "met" } else { "NOT met" }
        );
        println!(
            "goal: every query lost at saturation counted: lost {}, kernel drops {}, counted {}",
            o.run.lost,
            o.run.kernel_drops,
            o.counted.unwrap_or(0)
        );
    }
    if let Some(o) = ours("below") {
        println!(
            "goal: 0 lost below saturation ({pct} % of our max): lost {} ({})",
            o.run.lost,
            if o.run.lost == 0 { "met" } else { "NOT met" }
        );
    }
}
