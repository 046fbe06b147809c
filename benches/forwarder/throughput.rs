//! Phase 1, bulk throughput: `iperf3 -s` behind each setup, `iperf3 -c -P 1` and `-P 8`
//! through it, the proxy's, iperf3's and the machine's CPU around each transfer, and
//! table 1.
//!
//! Must not touch the other phases' figures; the goals are `report.rs`'s.

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::proxy::{Proxy, Setup, spawn_listening};
use crate::report::{PerSetup, Summary, Table, find, fmt};
use crate::rounds::{median, run_rounds};
use crate::support::procs::{self, Server, free_port};
use crate::support::report::join;
use crate::support::sample;
use crate::{Config, STOP_TIMEOUT};

/// `iperf3 -s` on a free loopback port.
pub struct IperfServer {
    pub server: Server,
    pub port: u16,
}

impl IperfServer {
    /// Starts `iperf3 -s` and waits until it listens.
    pub fn start() -> Result<IperfServer> {
        let port = free_port()?;
        let args = ["-s", "-B", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
        let server = spawn_listening("iperf3", "iperf3", &args, tempfile::tempdir()?, port, false)
            .context("iperf3 -s")?;
        Ok(IperfServer { server, port })
    }

    /// Where iperf3 clients (and the proxies) reach it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        self.server.stop(STOP_TIMEOUT);
    }
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    bits_per_second: f64,
    bytes: f64,
    /// Proxy CPU ticks during the transfer (`None` for direct).
    cpu: Option<u64>,
    /// Busy ticks of the machine outside the proxy, iperf3 and this process.
    others: u64,
    /// Busy ticks of iperf3's client and server (and this process, idle meanwhile).
    iperf: u64,
    /// Busy ticks of the whole machine.
    machine: u64,
    secs: f64,
}

fn run_iperf(target: SocketAddr, streams: u32, secs: u64) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("iperf3.json");
    let out = fs::File::create(&out_path)?;
    let mut child = Command::new("iperf3")
        .args(["-c", &target.ip().to_string()])
        .args(["-p", &target.port().to_string()])
        .args(["-t", &secs.to_string()])
        .args(["-P", &streams.to_string()])
        .args(["--connect-timeout", "3000", "-J"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .context("spawning iperf3 -c")?;
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let mut status = None;
    for _ in 0..100_000 {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        procs::stop_all(&mut [&mut child], STOP_TIMEOUT);
        bail!("iperf3 -c did not finish in {} s", secs + 30);
    }
    let text = fs::read_to_string(&out_path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("iperf3 -J output: {text}"))?;
    if let Some(err) = json.get("error") {
        bail!("iperf3: {err}");
    }
    let sum = &json["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("no end.sum_received.bits_per_second"))?;
    let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps, bytes))
}

fn measure_transfers(
    cfg: &Config,
    setup: Setup,
    iperf: SocketAddr,
    iperf_pid: u32,
) -> Result<[Transfer; 2]> {
    let proxy = Proxy::start(setup, iperf, cfg)?;
    let mut out = [Transfer {
        bits_per_second: 0.0,
        bytes: 0.0,
        cpu: None,
        others: 0,
        iperf: 0,
        machine: 0,
        secs: 0.0,
    }; 2];
    // Ours: this process, its reaped children (the iperf3 client) and the iperf3
    // server; the proxy is counted apart.
    let ours = || {
        let me = std::process::id();
        sample::ticks_sum(&[me, iperf_pid]) + sample::stat(me).map_or(0, |s| s.child_ticks)
    };
    for (slot, streams) in out.iter_mut().zip([1, 8]) {
        let before = proxy.cpu();
        let (machine_before, ours_before) = (sample::busy_ticks(), ours());
        let started = Instant::now();
        let (bps, bytes) = run_iperf(proxy.listen, streams, cfg.secs)
            .with_context(|| format!("{} -P {streams}", setup.name()))?;
        let secs = started.elapsed().as_secs_f64();
        let after = proxy.cpu();
        let cpu = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        let machine = sample::busy_ticks().saturating_sub(machine_before);
        let iperf = ours().saturating_sub(ours_before);
        let ours = iperf + cpu.unwrap_or(0);
        *slot = Transfer {
            bits_per_second: bps,
            bytes,
            cpu,
            others: machine.saturating_sub(ours),
            iperf,
            machine,
            secs,
        };
        // Let iperf3's server return to listening.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(out)
}

/// Throughput of one setup over the rounds, per stream count (`-P 1`, `-P 8`).
#[derive(Debug, Clone)]
struct Throughput {
    /// Bits per second of each round.
    rounds: [Vec<f64>; 2],
    /// CPUs busy with other work on the machine during the transfers (noise).
    others_cpus: [f64; 2],
    /// Proxy CPU milliseconds per GiB received, over all rounds (`None` for direct).
    ms_per_gib: [Option<f64>; 2],
    /// iperf3's (client and server) CPU milliseconds per GiB received.
    iperf_ms_per_gib: [f64; 2],
    /// CPUs the whole machine kept busy on average: at the core count, the transfer
    /// was bound by the machine, not by waiting.
    machine_cpus: [f64; 2],
}

impl Throughput {
    fn from_rounds(runs: &[[Transfer; 2]], clk_tck: u64) -> Option<Throughput> {
        if runs.is_empty() {
            return None;
        }
        let per = |i: usize| runs.iter().map(|r| r[i].bits_per_second).collect();
        let gib = |i: usize| runs.iter().map(|r| r[i].bytes).sum::<f64>() / f64::from(1u32 << 30);
        let per_gib = |ticks: u64, i: usize| ticks as f64 * 1000.0 / clk_tck as f64 / gib(i);
        let cpu = |i: usize| {
            let ticks: Option<u64> = runs.iter().map(|r| r[i].cpu).sum();
            ticks.map(|t| per_gib(t, i))
        };
        let iperf = |i: usize| per_gib(runs.iter().map(|r| r[i].iperf).sum(), i);
        let cpus = |ticks: &dyn Fn(&Transfer) -> u64, i: usize| {
            runs.iter().map(|r| ticks(&r[i])).sum::<u64>() as f64
                / clk_tck as f64
                / runs.iter().map(|r| r[i].secs).sum::<f64>()
        };
        let others = |i: usize| cpus(&|t| t.others, i);
        let machine = |i: usize| cpus(&|t| t.machine, i);
        Some(Throughput {
            rounds: [per(0), per(1)],
            others_cpus: [others(0), others(1)],
            ms_per_gib: [cpu(0), cpu(1)],
            iperf_ms_per_gib: [iperf(0), iperf(1)],
            machine_cpus: [machine(0), machine(1)],
        })
    }

    fn median(&self, i: usize) -> f64 {
        median(&self.rounds[i])
    }
}

/// Phase 1 over the rounds: table 1, and the throughputs in `summary`.
pub fn phase_throughput(
    cfg: &Config,
    iperf: SocketAddr,
    iperf_pid: u32,
    summary: &mut Summary,
) -> String {
    let runs = run_rounds(cfg, &cfg.setups, "throughput", |setup| {
        measure_transfers(cfg, setup, iperf, iperf_pid)
    });
    let results: PerSetup<Throughput> = runs
        .iter()
        .map(|(s, r)| (*s, Throughput::from_rounds(r, cfg.clk_tck)))
        .collect();
    let direct = find(&results, Setup::Direct).cloned();
    let mut t = Table::new(
        &format!(
            "1. Bulk throughput (iperf3 -t {} through the setup; end.sum_received; \
             median of {} round(s))",
            cfg.secs, cfg.rounds
        ),
        &cfg.setups,
    );
    for (i, streams) in [1, 8].into_iter().enumerate() {
        t.row(&format!("-P {streams}: Gbit/s"), &results, |r| {
            fmt(r.map(|r| r.median(i) / 1e9), 2)
        });
        t.row(&format!("-P {streams}: rounds Gbit/s"), &results, |r| {
            r.map_or_else(
                || "-".to_owned(),
                |r| join(&r.rounds[i], "/", |v| format!("{:.1}", v / 1e9)),
            )
        });
        t.row(&format!("-P {streams}: x direct"), &results, |r| {
            let d = direct.as_ref().map(|d| d.median(i));
            fmt(r.zip(d).map(|(r, d)| r.median(i) / d), 2)
        });
        t.row(&format!("-P {streams}: proxy CPU ms/GiB"), &results, |r| {
            fmt(r.and_then(|r| r.ms_per_gib[i]), 0)
        });
        t.row(&format!("-P {streams}: iperf3 CPU ms/GiB"), &results, |r| {
            fmt(r.map(|r| r.iperf_ms_per_gib[i]), 0)
        });
        t.row(
            &format!("-P {streams}: machine busy (CPUs)"),
            &results,
            |r| fmt(r.map(|r| r.machine_cpus[i]), 2),
        );
        t.row(
            &format!("-P {streams}: other load (CPUs busy)"),
            &results,
            |r| fmt(r.map(|r| r.others_cpus[i]), 2),
        );
    }
    for (i, streams) in [&mut summary.one_stream, &mut summary.eight_streams]
        .into_iter()
        .enumerate()
    {
        *streams = results
            .iter()
            .map(|(s, r)| (*s, r.as_ref().map(|r| r.median(i))))
            .collect();
    }
    t.render()
}
