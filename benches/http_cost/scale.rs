//! The scale phase: every registered instance (uneven loads) heartbeating at a fixed
//! rate, paced by the bench's own client over several keep-alive connections (wrk
//! cannot pace), each connection at its share of the rate with its slots offset from
//! the others'; while `/servers?service=bench&limit=5` is sampled at a low rate on a
//! connection and a thread of its own, so its latencies do not wait behind the
//! heartbeat tasks. The server's CPU is read around the whole phase.
//!
//! Owns no goal: the bench's root file judges the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::sleep_until;

use crate::instances::{self, Fleet, Instance, Shape};
use crate::support::http::{self, Conn};
use crate::support::report::{Tally, nanos};
use crate::wrk::{SETTLE, Ticks, core_pct, per_req_us};
use crate::{REQUEST_TIMEOUT, SERVICE};

/// A send this long after its slot counts as late (tokio's timer has 1 ms steps).
pub const LATE: Duration = Duration::from_millis(2);
/// Heartbeat latencies kept per connection, spread over the phase.
const SAMPLES_PER_CONN: u64 = 200_000;
/// How often the phase prints its progress.
const PROGRESS: Duration = Duration::from_secs(30);

/// The phase's settings (`SB_BENCH_SCALE_*`).
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Instances registered for it.
    pub size: usize,
    /// Heartbeats in all, and per second.
    pub beats: u64,
    pub rate: u64,
    pub conns: usize,
    /// `/servers` samples per second.
    pub reads_per_sec: u64,
}

impl ScaleConfig {
    /// How long the heartbeats take at the asked rate.
    pub fn planned(&self) -> Duration {
        Duration::from_secs_f64(self.beats as f64 / self.rate.max(1) as f64)
    }
}

/// What one connection (or the sampler) saw.
#[derive(Debug, Default)]
struct Part {
    /// Latencies in nanoseconds.
    tally: Tally,
    late: u64,
    worst_lag: Duration,
}

/// What the phase measured.
#[derive(Debug, Default)]
pub struct ScaleResult {
    pub n: usize,
    /// Heartbeats (200 counts as ok), latencies sampled and sorted.
    pub beats: Tally,
    pub sent: u64,
    pub late: u64,
    pub worst_lag: Duration,
    pub elapsed: Duration,
    /// `/servers` samples, latencies sorted.
    pub reads: Tally,
    pub server_ticks: u64,
    pub other_ticks: u64,
    pub window: Duration,
    pub clk_tck: u64,
}

impl ScaleResult {
    pub fn beats_per_sec(&self) -> f64 {
        self.beats.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU per answered heartbeat (the `/servers` samples included).
    pub fn cpu_us(&self) -> Option<f64> {
        per_req_us(self.server_ticks, self.beats.answered, self.clk_tck)
    }

    pub fn server_pct(&self) -> f64 {
        core_pct(self.server_ticks, self.window, self.clk_tck)
    }

    pub fn other_pct(&self) -> f64 {
        core_pct(self.other_ticks, self.window, self.clk_tck)
    }
}

/// The `p`th percentile of sorted nanoseconds, in microseconds.
pub fn percentile_us(sorted: &[u64], p: usize) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(sorted.len() * p / 100).min(last)] as f64 / 1_000.0)
}

/// Runs the phase on `fleet`'s instances, the server being `server_pid`.
pub async fn run(
    fleet: &Fleet,
    cfg: &ScaleConfig,
    server_pid: u32,
    clk_tck: u64,
) -> anyhow::Result<ScaleResult> {
    let (addr, n) = (fleet.addr, fleet.list.len());
    let conns = cfg.conns.clamp(1, n.max(1));
    let per_conn = cfg.beats.div_ceil(conns as u64);
    let interval = Duration::from_secs_f64(conns as f64 / cfg.rate.max(1) as f64);
    let every = per_conn.div_ceil(SAMPLES_PER_CONN).max(1);
    let planned = cfg.planned();
    let deadline = Instant::now() + planned + planned / 2 + Duration::from_secs(60);
    let list = Arc::new(fleet.list.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let before = Ticks::now(server_pid)?;
    let started = Instant::now();
    let sampler = {
        let (stop, reads) = (Arc::clone(&stop), cfg.reads_per_sec);
        std::thread::spawn(move || sample_servers(addr, reads, deadline, &stop))
    };
    let mut tasks = Vec::with_capacity(conns);
    for w in 0..conns {
        let first = started + interval.mul_f64(w as f64 / conns as f64);
        let beat = Beat {
            list: Arc::clone(&list),
            w,
            conns,
            first,
            interval,
            every,
            sent: Arc::clone(&sent),
        };
        tasks.push(tokio::spawn(beat.run(addr, per_conn, deadline)));
    }
    let progress = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for _ in 0..100_000 {
                tokio::time::sleep(PROGRESS).await;
                let (s, secs) = (
                    sent.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                );
                let cpu = Ticks::now(server_pid)
                    .map(|t| before.until(t).0)
                    .unwrap_or(0);
                let pct = core_pct(cpu, started.elapsed(), clk_tck);
                println!(
                    "  scale: {s} heartbeats in {secs:.0} s ({:.0}/s), server {pct:.0}% of a core",
                    s as f64 / secs
                );
            }
        })
    };
    let mut result = ScaleResult {
        n,
        ..ScaleResult::default()
    };
    for task in tasks {
        let part = task.await.context("heartbeat worker")?;
        result.beats.merge(part.tally);
        result.late += part.late;
        result.worst_lag = result.worst_lag.max(part.worst_lag);
    }
    result.elapsed = started.elapsed();
    result.sent = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    let reads = tokio::task::spawn_blocking(move || sampler.join())
        .await
        .context("joining the /servers sampler")?;
    result.reads = reads.map_err(|_| anyhow::anyhow!("the /servers sampler panicked"))?;
    tokio::time::sleep(SETTLE).await;
    result.window = started.elapsed();
    (result.server_ticks, _, result.other_ticks) = before.until(Ticks::now(server_pid)?);
    result.clk_tck = clk_tck;
    result.beats.latencies.sort_unstable();
    result.reads.latencies.sort_unstable();
    Ok(result)
}

/// One heartbeat connection: instances `w`, `w + conns`, ... in turn, slot `k` at
/// `first + k × interval`.
struct Beat {
    list: Arc<Vec<Instance>>,
    w: usize,
    conns: usize,
    first: Instant,
    interval: Duration,
    /// Every `every`th latency is kept.
    every: u64,
    sent: Arc<AtomicU64>,
}

impl Beat {
    async fn run(self, addr: std::net::SocketAddr, beats: u64, deadline: Instant) -> Part {
        let n = self.list.len();
        let mine = (n - self.w).div_ceil(self.conns).max(1);
        let mut part = Part::default();
        let mut conn: Option<Conn> = None;
        let mut req = Vec::with_capacity(512);
        for k in 0..beats {
            let due = self.first + self.interval.mul_f64(k as f64);
            if due >= deadline || Instant::now() >= deadline {
                break;
            }
            sleep_until(due.into()).await;
            let lag = Instant::now().saturating_duration_since(due);
            part.late += u64::from(lag > LATE);
            part.worst_lag = part.worst_lag.max(lag);
            let i = self.w + (k as usize % mine) * self.conns;
            req.clear();
            instances::heartbeat(
                addr,
                &self.list[i],
                Shape::Uneven.connections(i, n),
                &mut req,
            );
            let t0 = Instant::now();
            let outcome = http::call(&mut conn, addr, &req, false, REQUEST_TIMEOUT).await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            // A latency is kept for every `every`th heartbeat only (0 samples allowed
            // otherwise), so the kept ones span the whole phase.
            let keep = if k % self.every == 0 { usize::MAX } else { 0 };
            match outcome {
                Ok(a) => {
                    part.tally
                        .note_answer(a.status, a.status == 200, nanos(t0.elapsed()), keep)
                }
                Err(err) => part.tally.note_error(err),
            }
        }
        part
    }
}

/// `/servers?service=bench&limit=5` every `1 / per_sec` on one connection, on a
/// current-thread runtime of its own, until `stop` or `deadline`.
fn sample_servers(
    addr: std::net::SocketAddr,
    per_sec: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> Tally {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            let mut tally = Tally::default();
            tally.note_error(format!("no runtime for the sampler: {err}"));
            return tally;
        }
    };
    runtime.block_on(async {
        let path = format!("/servers?service={SERVICE}&limit=5");
        let req = http::request("GET", &path, addr, &[], b"");
        let interval = Duration::from_secs_f64(1.0 / per_sec.max(1) as f64);
        let started = Instant::now();
        let most = per_sec * deadline.saturating_duration_since(started).as_secs().max(1);
        let mut tally = Tally::default();
        let mut conn: Option<Conn> = None;
        for k in 0..most {
            let due = started + interval.mul_f64(k as f64);
            if stop.load(Ordering::Relaxed) || due >= deadline {
                break;
            }
            sleep_until(due.into()).await;
            let t0 = Instant::now();
            match http::call(&mut conn, addr, &req, false, REQUEST_TIMEOUT).await {
                Ok(a) => {
                    let latency = nanos(t0.elapsed());
                    tally.note_answer(a.status, a.status == 200, latency, usize::MAX);
                }
                Err(err) => tally.note_error(err),
            }
        }
        tally
    })
}
