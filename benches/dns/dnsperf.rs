//! dnsperf (Debian's `dnsperf`) as the load generator of the NSD comparison: one run
//! against one server, its summary parsed, the server's CPU from `/proc` (the whole
//! process tree: NSD forks its servers) and the kernel's drop counters around it.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::support::sample;

/// How one dnsperf run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub secs: u64,
    /// dnsperf `-c`: client sockets (SO_REUSEPORT spreads them by source port).
    pub clients: usize,
    /// dnsperf `-T`.
    pub threads: usize,
    /// dnsperf `-q`: queries outstanding at most.
    pub outstanding: usize,
    /// dnsperf `-Q`: the offered rate; `None` for as fast as answers come.
    pub qps: Option<u64>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    /// CPU seconds of the server's processes over the run.
    pub server_cpu_secs: f64,
    /// The `drops` column of `/proc/net/udp` for the server's port, over the run:
    /// datagrams the kernel could not queue on the server's sockets.
    pub kernel_drops: u64,
    /// `RcvbufErrors` of `/proc/net/snmp` over the run, machine-wide (the client's
    /// sockets, the server's and anything else running).
    pub machine_rcvbuf_errors: u64,
}

impl Run {
    pub fn cpu_us(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.completed.max(1) as f64
    }

    /// Answers per CPU second of the server.
    pub fn per_cpu_sec(&self) -> f64 {
        self.completed as f64 / self.server_cpu_secs.max(1e-9)
    }
}

/// Whether dnsperf is installed.
pub fn available() -> bool {
    Command::new("dnsperf").arg("-h").output().is_ok()
}

/// Writes a query file of `lines` copies of `name type`.
pub fn query_file(path: &Path, name: &str, kind: &str, lines: usize) -> anyhow::Result<()> {
    let text = format!("{name} {kind}\n").repeat(lines);
    fs::write(path, text).context("writing the dnsperf query file")
}

/// Runs dnsperf against `server` with the queries of `queries`, measuring the CPU of
/// `root` and its children.
pub fn run(server: SocketAddr, queries: &Path, load: Load, root: u32) -> anyhow::Result<Run> {
    let mut cmd = Command::new("dnsperf");
    cmd.arg("-s")
        .arg(server.ip().to_string())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(queries)
        .arg("-l")
        .arg(load.secs.to_string())
        .arg("-c")
        .arg(load.clients.to_string())
        .arg("-T")
        .arg(load.threads.to_string())
        .arg("-q")
        .arg(load.outstanding.to_string())
        // A lost query is given up after 1 s (queries outstanding at the end too).
        .args(["-t", "1"]);
    if let Some(qps) = load.qps {
        cmd.arg("-Q").arg(qps.to_string());
    }
    let clk_tck = sample::clock_ticks() as f64;
    let (cpu_before, drops_before, rcvbuf_before) =
        (tree_ticks(root), udp_drops(server.port()), rcvbuf_errors());
    let out = cmd.output().context("running dnsperf")?;
    let (cpu_after, drops_after, rcvbuf_after) =
        (tree_ticks(root), udp_drops(server.port()), rcvbuf_errors());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dnsperf exited with {}: {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |label: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {label:?} in dnsperf's output: {text}"))
    };
    Ok(Run {
        sent: field("Queries sent:")? as u64,
        completed: field("Queries completed:")? as u64,
        lost: field("Queries lost:")? as u64,
        qps: field("Queries per second:")?,
        server_cpu_secs: cpu_after.saturating_sub(cpu_before) as f64 / clk_tck,
        kernel_drops: drops_after.saturating_sub(drops_before),
        machine_rcvbuf_errors: rcvbuf_after.saturating_sub(rcvbuf_before),
    })
}

/// CPU ticks of `root` and its live descendants: NSD's first process becomes xfrd and
/// its child is the main process, whose children are the servers.
fn tree_ticks(root: u32) -> u64 {
    sample::ticks_sum(&sample::process_tree(root))
}

/// Sum of the `drops` column of `/proc/net/udp` and `/proc/net/udp6` over the
/// sockets bound to local `port`.
fn udp_drops(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let local = f.get(1)?;
                    if !local.ends_with(&want) {
                        return None;
                    }
                    f.last()?.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `Udp: ... RcvbufErrors` of `/proc/net/snmp`.
fn rcvbuf_errors() -> u64 {
    let Ok(text) = fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
