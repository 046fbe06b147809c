//! `/proc` readings: CPU ticks and RSS of processes and of a process and its
//! descendants, busy ticks of the machine, the kernel's socket memory
//! (`/proc/net/sockstat`, `/proc/slabinfo`).

use std::fs;
use std::process::Command;

use anyhow::Context;

/// What the benches read from `/proc/PID/stat`.
#[derive(Debug, Clone)]
pub struct Stat {
    /// The command name (`comm`).
    pub name: String,
    pub ppid: u32,
    /// utime + stime of the process (all its threads), in clock ticks.
    pub ticks: u64,
    /// cutime + cstime: CPU of the children it has reaped.
    pub child_ticks: u64,
    /// Start time after boot, in clock ticks (tells a reused PID apart).
    pub start: u64,
}

/// `/proc/PID/stat` of a process, if it is there.
pub fn stat(pid: u32) -> Option<Stat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; `f[0]` is field 3
    // (state) of proc(5): ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    // ... starttime(22).
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        name: stat.get(open + 1..close)?.to_owned(),
        ppid: f.get(1)?.parse().ok()?,
        ticks: n(11)? + n(12)?,
        child_ticks: n(13).unwrap_or(0) + n(14).unwrap_or(0),
        start: n(19)?,
    })
}

/// utime + stime of the process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    stat(pid)
        .map(|s| s.ticks)
        .with_context(|| format!("reading /proc/{pid}/stat"))
}

/// A `Name:  value ...` field of `/proc/PID/status` as a number.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:").with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The PIDs in `/proc` now.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .take(100_000)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// `root` and all its descendants (a master and its workers).
pub fn process_tree(root: u32) -> Vec<u32> {
    let parent: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect();
    let mut tree = vec![root];
    // Bounded: at most one pass per process found.
    for _ in 0..parent.len() {
        let before = tree.len();
        for &(pid, ppid) in &parent {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree
}

/// utime + stime summed over `pids` (those still there), in clock ticks.
pub fn ticks_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat(p)).map(|s| s.ticks).sum()
}

/// A numeric `/proc/PID/status` field (`VmRSS:`, `Threads:`) summed over `pids`.
pub fn status_sum(pids: &[u32], field: &str) -> u64 {
    pids.iter().filter_map(|&p| status_field(p, field)).sum()
}

/// Ticks of all cores from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    /// user + nice + system + steal (guest time is inside user).
    pub procs: u64,
    /// irq + softirq (mostly the loopback network stack; charged to no process).
    pub irq: u64,
}

impl Machine {
    /// Everything but idle and iowait.
    pub fn busy(self) -> u64 {
        self.procs + self.irq
    }
}

/// The machine's ticks now.
pub fn machine() -> anyhow::Result<Machine> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let f = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ok(Machine {
        procs: f(0) + f(1) + f(2) + f(7),
        irq: f(5) + f(6),
    })
}

/// Busy ticks of all CPUs now ([`Machine::busy`]), 0 when `/proc/stat` cannot be read.
pub fn busy_ticks() -> u64 {
    machine().map_or(0, Machine::busy)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be read.
pub fn clock_ticks() -> u64 {
    getconf("CLK_TCK").unwrap_or(100)
}

/// Bytes per memory page (`getconf PAGESIZE`), 4096 when it cannot be read.
pub fn page_size() -> u64 {
    getconf("PAGESIZE").unwrap_or(4096)
}

fn getconf(name: &str) -> Option<u64> {
    Command::new("getconf")
        .arg(name)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
}

/// The `mem` field of the `TCP:` line of `/proc/net/sockstat`: pages the kernel has
/// charged to the buffers of all TCP sockets (`tcp_memory_allocated`, machine-wide,
/// not per network namespace; per-CPU reserves make it move in steps).
pub fn tcp_mem_pages() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let at = f.iter().position(|w| *w == "mem")?;
    f.get(at + 1)?.parse().ok()
}

/// Bytes in use in the named slab caches (`active_objs * objsize` of
/// `/proc/slabinfo`, root only), machine-wide.
pub fn slab_bytes(caches: &[&str]) -> Option<u64> {
    let text = fs::read_to_string("/proc/slabinfo").ok()?;
    let bytes = text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if !caches.contains(f.first()?) {
            return None;
        }
        Some(f.get(1)?.parse::<u64>().ok()? * f.get(3)?.parse::<u64>().ok()?)
    });
    Some(bytes.sum())
}

/// The TCP sockets whose local port is `local` or whose peer port is `peer`, and the
/// bytes the kernel holds for them: r + w + f of `skmem` in `ss -tmnO` (receive queue,
/// send queue and forward-allocated bytes, what `tcp_mem` charges; the `struct
/// tcp_sock` itself is slab memory, not in here).
pub fn skmem_bytes(local: u16, peer: u16) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("ss")
        .arg("-tmnHO")
        .output()
        .context("running ss")?;
    let out = String::from_utf8_lossy(&out.stdout);
    let port = |a: &str| a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mem = |f: &str| -> Option<u64> {
        let inner = f.strip_prefix("skmem:(")?.strip_suffix(')')?;
        let field = |k: &str| {
            let v = inner.split(',').find_map(|x| x.strip_prefix(k))?;
            v.parse::<u64>().ok()
        };
        Some(field("r")? + field("w")? + field("f")?)
    };
    let bytes = out.lines().filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let ours = port(f.get(3)?) == Some(local) || port(f.get(4)?) == Some(peer);
        if !ours {
            return None;
        }
        f.iter().find_map(|x| mem(x))
    });
    Ok(bytes.fold((0, 0), |(n, sum), b| (n + 1, sum + b)))
}
