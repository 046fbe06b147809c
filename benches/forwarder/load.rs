//! The closed-loop loads phases 2 and 4 share: what a load got done (`Load`), one
//! measured round with its warm-up and the proxy's, this process's and the machine's
//! CPU (`RateRun`, `measured`), the rounds summed up (`Rate`), and the table rows both
//! phases print.
//!
//! Must not open a connection or send a datagram itself: `rate.rs` and `udp.rs` do.

use std::future::Future;
use std::time::Instant;

use anyhow::{Result, bail};
use tokio::task::JoinSet;

use crate::proxy::{Proxy, Setup};
use crate::report::{PerSetup, Table, find, fmt};
use crate::rounds::{median, percentile};
use crate::support::report::join;
use crate::support::sample;

/// Latency samples kept per rate worker.
const MAX_SAMPLES_PER_WORKER: usize = 1_000_000;

/// What a closed-loop load (phase 2 or 4) got done.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: u64,
    /// Failed operations (connect or I/O errors, timeouts of the TCP tests).
    pub errors: u64,
    /// UDP requests whose echo did not come within `UDP_REPLY_TIMEOUT`.
    pub lost: u64,
    /// UDP echoes that came for a request already given up.
    pub late: u64,
    /// UDP requests no backend received (the rest of `lost` went missing on the way
    /// back).
    pub unreached: u64,
    pub first_error: Option<String>,
    pub latencies_us: Vec<u32>,
}

impl Load {
    /// Counts a success, its latency kept while fewer than `MAX_SAMPLES_PER_WORKER` are.
    pub fn note_ok(&mut self, start: Instant) {
        self.ok += 1;
        if self.latencies_us.len() < MAX_SAMPLES_PER_WORKER {
            let us = start.elapsed().as_micros();
            self.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// Counts a failure, the first one's text kept.
    pub fn note_error(&mut self, err: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| err.to_string());
    }

    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.lost += other.lost;
        self.late += other.late;
        self.unreached += other.unreached;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

/// The sum of the loads of a set of tasks.
pub async fn join_loads(mut set: JoinSet<Load>) -> Load {
    let mut total = Load::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(load) => total.merge(load),
            Err(err) => total.note_error(err),
        }
    }
    total
}

/// One round of the connection-rate (or UDP request-rate) test.
#[derive(Debug, Clone)]
pub struct RateRun {
    conns: u64,
    secs: f64,
    errors: u64,
    lost: u64,
    late: u64,
    unreached: u64,
    /// Proxy CPU ticks during the round (`None` for direct).
    ticks: Option<u64>,
    /// This process's CPU ticks (clients and echo backend).
    bench_ticks: u64,
    /// Busy ticks of the whole machine (every CPU, anyone's work).
    machine_ticks: u64,
    latencies_us: Vec<u32>,
}

/// The connection-rate rounds of one setup, summed up.
#[derive(Debug, Clone)]
pub struct Rate {
    /// Connections per second of each round.
    pub rounds: Vec<f64>,
    pub per_sec: f64,
    pub errors: u64,
    pub lost: u64,
    pub late: u64,
    pub unreached: u64,
    /// Proxy CPU per connection in microseconds over all rounds (`None` for direct).
    pub cpu_us: Option<f64>,
    /// The bench process's CPU (clients and echo backend) per connection, µs.
    pub bench_us: f64,
    /// The whole machine's busy CPU per connection, µs.
    pub machine_us: f64,
    /// CPUs busy with anything but the proxy and this process (other work on the
    /// machine: a sign of noise), averaged over the rounds.
    pub others_cpus: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Rate {
    /// The rounds of one setup summed up; `None` when none succeeded.
    pub fn from_rounds(runs: &[RateRun], clk_tck: u64) -> Option<Rate> {
        if runs.is_empty() {
            return None;
        }
        let rounds: Vec<f64> = runs.iter().map(|r| r.conns as f64 / r.secs).collect();
        let conns: u64 = runs.iter().map(|r| r.conns).sum();
        let ticks: Option<u64> = runs.iter().map(|r| r.ticks).sum();
        let per_conn = |t: u64| t as f64 * 1e6 / clk_tck as f64 / conns.max(1) as f64;
        let mut lat: Vec<u32> = runs
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        lat.sort_unstable();
        Some(Rate {
            per_sec: median(&rounds),
            rounds,
            errors: runs.iter().map(|r| r.errors).sum(),
            lost: runs.iter().map(|r| r.lost).sum(),
            late: runs.iter().map(|r| r.late).sum(),
            unreached: runs.iter().map(|r| r.unreached).sum(),
            cpu_us: ticks.map(per_conn),
            bench_us: per_conn(runs.iter().map(|r| r.bench_ticks).sum()),
            machine_us: per_conn(runs.iter().map(|r| r.machine_ticks).sum()),
            others_cpus: runs
                .iter()
                .map(|r| {
                    r.machine_ticks
                        .saturating_sub(r.bench_ticks + r.ticks.unwrap_or(0))
                })
                .sum::<u64>() as f64
                / clk_tck as f64
                / runs.iter().map(|r| r.secs).sum::<f64>(),
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            p999_us: percentile(&lat, 0.999),
            max_us: percentile(&lat, 1.0),
        })
    }
}

/// Runs `load` through `proxy` for one second, unmeasured (warm-up), then for `secs`
/// with the proxy's, this process's and the machine's CPU counted.
pub fn measured<F: Future<Output = Load>>(
    runtime: &tokio::runtime::Runtime,
    proxy: &Proxy,
    secs: f64,
    load: impl Fn(f64) -> F,
) -> Result<RateRun> {
    if runtime.block_on(load(1.0)).ok == 0 {
        bail!("nothing echoed through {} during warm-up", proxy.listen);
    }
    let cpu_before = proxy.cpu();
    let bench_before = sample::ticks_sum(&[std::process::id()]);
    let machine_before = sample::busy_ticks();
    let started = Instant::now();
    let done = runtime.block_on(load(secs));
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = proxy.cpu();
    let bench_after = sample::ticks_sum(&[std::process::id()]);
    let machine_after = sample::busy_ticks();
    if let Some(err) = &done.first_error {
        eprintln!("  {} error(s); first: {err}", done.errors);
    }
    Ok(RateRun {
        conns: done.ok,
        secs: elapsed,
        errors: done.errors,
        lost: done.lost,
        late: done.late,
        unreached: done.unreached,
        ticks: cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
        bench_ticks: bench_after.saturating_sub(bench_before),
        machine_ticks: machine_after.saturating_sub(machine_before),
        latencies_us: done.latencies_us,
    })
}

/// Rate and proxy CPU per operation, as the goals want them.
pub fn summary_rates(results: &PerSetup<Rate>) -> PerSetup<(f64, Option<f64>)> {
    let pick = |r: &Rate| (r.per_sec, r.cpu_us);
    results
        .iter()
        .map(|(s, r)| (*s, r.as_ref().map(pick)))
        .collect()
}

/// The rows phases 2 and 4 share: rate, CPU per operation (`unit`), latency.
pub fn rate_rows(t: &mut Table, results: &PerSetup<Rate>, noun: &str, unit: &str) {
    let direct = find(results, Setup::Direct).cloned();
    t.row(&format!("{noun}/s"), results, |r| {
        fmt(r.map(|r| r.per_sec), 0)
    });
    t.row(&format!("rounds {unit}/s"), results, |r| {
        r.map_or_else(
            || "-".to_owned(),
            |r| join(&r.rounds, "/", |v| format!("{v:.0}")),
        )
    });
    t.row("x direct", results, |r| {
        fmt(
            r.zip(direct.as_ref()).map(|(r, d)| r.per_sec / d.per_sec),
            2,
        )
    });
    t.row(&format!("proxy CPU us/{unit}"), results, |r| {
        fmt(r.and_then(|r| r.cpu_us), 1)
    });
    t.row(
        &format!("bench (client+echo) CPU us/{unit}"),
        results,
        |r| fmt(r.map(|r| r.bench_us), 1),
    );
    t.row(&format!("machine busy CPU us/{unit}"), results, |r| {
        fmt(r.map(|r| r.machine_us), 1)
    });
    t.row("other load (CPUs busy)", results, |r| {
        fmt(r.map(|r| r.others_cpus), 2)
    });
    t.row("latency p50 us", results, |r| fmt(r.map(|r| r.p50_us), 0));
    t.row("latency p99 us", results, |r| fmt(r.map(|r| r.p99_us), 0));
}
