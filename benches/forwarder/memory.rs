//! Phase 3, memory per held connection: `SB_BENCH_CONNS` connections opened and held
//! idle, then each carrying a 64 KiB burst; the proxy's RSS and the kernel's memory for
//! the sockets (`ss` skmem of the proxy's own sockets, sockstat, socket slabs) at the
//! baseline, idle and after the bursts, and table 3.
//!
//! Must not touch the other phases' figures; the goals are `report.rs`'s.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::backends::echo_once;
use crate::proxy::{Proxy, Setup};
use crate::report::{Summary, Table, find, fmt};
use crate::support::sample;
use crate::{Config, OP_TIMEOUT};

/// The burst each held connection carries in the second memory test.
const BURST: usize = 64 * 1024;

/// Connections opened (or bursts run) at once when filling the memory test.
const FILL_CONCURRENCY: usize = 100;

/// The slab caches holding every socket's fixed kernel objects: `struct tcp_sock`,
/// the socket's inode and its `struct file` (not merged with other caches here;
/// epoll items and dentries are, so they are left out).
const SOCKET_SLABS: [&str; 3] = ["TCP", "sock_inode_cache", "filp"];

#[derive(Debug, Clone, Copy)]
struct Memory {
    held: usize,
    /// Before the connections, with them held idle, after the bursts.
    at: [MemorySample; 3],
    processes: usize,
    threads: u64,
}

/// Memory readings at one moment of the memory test.
#[derive(Debug, Clone, Copy)]
struct MemorySample {
    /// The proxy's RSS in KiB (`None` for direct).
    rss_kib: Option<u64>,
    /// How many sockets `skmem` sums, and their bytes: the proxy's own sockets
    /// (direct: client and backend sockets).
    sockets: u64,
    skmem: u64,
    /// `/proc/net/sockstat` TCP mem, in pages (every TCP socket on the machine).
    tcp_mem_pages: u64,
    /// Bytes of `SOCKET_SLABS` objects (every socket on the machine).
    slab: u64,
}

impl MemorySample {
    fn now(proxy: &Proxy, echo: SocketAddr) -> MemorySample {
        let skmem = sample::skmem_bytes(proxy.listen.port(), echo.port());
        if let Err(err) = &skmem {
            eprintln!("  ss: {err:#}");
        }
        let (sockets, skmem) = skmem.unwrap_or_default();
        MemorySample {
            rss_kib: proxy.rss(),
            sockets,
            skmem,
            tcp_mem_pages: sample::tcp_mem_pages().unwrap_or(0),
            slab: sample::slab_bytes(&SOCKET_SLABS).unwrap_or(0),
        }
    }
}

impl Memory {
    /// KiB per held connection that `bytes` (of the sample) grew by from the
    /// baseline to sample `i`.
    fn per_conn(&self, i: usize, bytes: impl Fn(&MemorySample) -> u64) -> f64 {
        (bytes(&self.at[i]) as f64 - bytes(&self.at[0]) as f64) / 1024.0 / self.held as f64
    }
}

/// Opens `n` connections that each echoed 16 bytes, `FILL_CONCURRENCY` at a time.
async fn open_held(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    for start in (0..n).step_by(FILL_CONCURRENCY) {
        let mut set = JoinSet::new();
        for _ in start..(start + FILL_CONCURRENCY).min(n) {
            set.spawn(async move {
                match tokio::time::timeout(OP_TIMEOUT, echo_once(addr)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow!("timed out")),
                }
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(s) => held.push(s),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("  {failed} of {n} connections failed; first: {e:#}");
    }
    if held.is_empty() {
        bail!("no connection could be held");
    }
    Ok(held)
}

static BURST_DATA: [u8; BURST] = [0x5a; BURST];

/// Sends `BURST` bytes over each held connection and reads them back.
async fn burst_all(held: Vec<TcpStream>) -> (Vec<TcpStream>, usize) {
    let mut out = Vec::with_capacity(held.len());
    let mut failed = 0;
    let mut rest = held.into_iter();
    for _ in 0..=rest.len() / FILL_CONCURRENCY {
        let mut set = JoinSet::new();
        for mut s in rest.by_ref().take(FILL_CONCURRENCY) {
            set.spawn(async move {
                let work = async {
                    let (mut r, mut w) = s.split();
                    let mut back = vec![0u8; BURST];
                    tokio::try_join!(w.write_all(&BURST_DATA), r.read_exact(&mut back))?;
                    anyhow::ensure!(back[..] == BURST_DATA[..], "burst echo mismatch");
                    anyhow::Ok(())
                };
                let ok = matches!(tokio::time::timeout(OP_TIMEOUT, work).await, Ok(Ok(())));
                (s, ok)
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok((s, ok)) = joined {
                failed += usize::from(!ok);
                out.push(s);
            }
        }
    }
    (out, failed)
}

fn measure_memory(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    setup: Setup,
    echo: SocketAddr,
) -> Result<Memory> {
    let proxy = Proxy::start(setup, echo, cfg)?;
    // Warm-up: a few connections, so one-time setup is not charged to connections.
    runtime.block_on(async {
        for _ in 0..32 {
            let _ = tokio::time::timeout(OP_TIMEOUT, echo_once(proxy.listen)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let base = MemorySample::now(&proxy, echo);
    let held = runtime.block_on(open_held(proxy.listen, cfg.conns))?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = MemorySample::now(&proxy, echo);
    let (held, failed) = runtime.block_on(burst_all(held));
    if failed > 0 {
        eprintln!("  {failed} of {} bursts failed", held.len());
    }
    std::thread::sleep(Duration::from_secs(1));
    let burst = MemorySample::now(&proxy, echo);
    let pids = proxy.pids();
    let memory = Memory {
        held: held.len(),
        at: [base, idle, burst],
        processes: pids.len(),
        threads: sample::status_sum(&pids, "Threads:"),
    };
    drop(held);
    // Let the proxy see the closes before it is stopped.
    std::thread::sleep(Duration::from_millis(300));
    Ok(memory)
}

/// Phase 3 for every setup (one round): table 3, and the memory figures in `summary`.
pub fn phase_memory(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    echo: SocketAddr,
    summary: &mut Summary,
) -> String {
    let mut results = Vec::new();
    for &setup in &cfg.setups {
        eprintln!("[memory] {}", setup.name());
        let r = measure_memory(cfg, runtime, setup, echo);
        if let Err(err) = &r {
            eprintln!("  failed: {err:#}");
        }
        results.push((setup, r.ok()));
    }
    let mut t = Table::new(
        &format!(
            "3. Memory per held connection ({} connections; proxy RSS, all its processes; \
             kernel memory of the sockets)",
            cfg.conns
        ),
        &cfg.setups,
    );
    let rss = |m: &Memory, i: usize| {
        m.at[i]
            .rss_kib
            .map(|_| m.per_conn(i, |s| s.rss_kib.unwrap_or(0) * 1024))
    };
    let page = sample::page_size();
    let direct = find(&results, Setup::Direct).copied();
    // Machine-wide figures: the proxies' (those with an RSS) minus direct's (client
    // and backend sockets).
    let beyond_direct = |m: &Memory, i: usize, bytes: &dyn Fn(&MemorySample) -> u64| {
        let own = m.per_conn(i, bytes);
        match (m.at[0].rss_kib, direct) {
            (None, _) => Some(own),
            (Some(_), Some(d)) => Some(own - d.per_conn(i, bytes)),
            (Some(_), None) => None,
        }
    };
    let tcp_mem = |s: &MemorySample| s.tcp_mem_pages * page;
    let slab = |s: &MemorySample| s.slab;
    t.row("processes / threads", &results, |r| {
        r.map_or("-".to_owned(), |m| {
            format!("{} / {}", m.processes, m.threads)
        })
    });
    t.row("connections held", &results, |r| {
        r.map_or("-".to_owned(), |m| m.held.to_string())
    });
    t.row("sockets in the ss sum, held idle", &results, |r| {
        r.map_or("-".to_owned(), |m| m.at[1].sockets.to_string())
    });
    for (label, i) in [
        ("RSS baseline MiB", 0),
        ("RSS idle MiB", 1),
        ("RSS after burst MiB", 2),
    ] {
        t.row(label, &results, |r| {
            fmt(
                r.and_then(|m| m.at[i].rss_kib).map(|k| k as f64 / 1024.0),
                1,
            )
        });
    }
    for (when, i) in [("idle (16 B echoed)", 1), ("after 64 KiB burst", 2)] {
        t.row(&format!("KiB/conn {when}"), &results, |r| {
            fmt(r.and_then(|m| rss(m, i)), 2)
        });
        t.row("  kernel skmem (ss)", &results, |r| {
            fmt(r.map(|m| m.per_conn(i, |s| s.skmem)), 2)
        });
        t.row("  kernel TCP mem (sockstat)", &results, |r| {
            fmt(r.and_then(|m| beyond_direct(m, i, &tcp_mem)), 2)
        });
        t.row("  kernel socket slab", &results, |r| {
            fmt(r.and_then(|m| beyond_direct(m, i, &slab)), 2)
        });
        t.row("  RSS + skmem + slab", &results, |r| {
            let total = r.and_then(|m| {
                Some(rss(m, i)? + m.per_conn(i, |s| s.skmem) + beyond_direct(m, i, &slab)?)
            });
            fmt(total, 2)
        });
    }
    summary.memory = results
        .iter()
        .map(|(s, r)| (*s, r.and_then(|m| Some((rss(&m, 1)?, rss(&m, 2)?)))))
        .collect();
    summary.kernel = results
        .iter()
        .map(|(s, r)| (*s, r.map(|m| m.per_conn(2, |s| s.skmem))))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let reserve = fs::read_to_string("/proc/sys/net/core/mem_pcpu_rsv")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut text = t.render();
    let _ = write!(
        text,
        "(direct has no proxy: no RSS; its kernel rows are the client's and the backend's \
         sockets.\n skmem: r + w + f of `ss -tmnO` (receive queue, send queue, \
         forward-allocated bytes) of the proxy's own sockets only, both sides (local \
         port = its listener, peer port = the echo backend); client and backend sockets \
         excluded.\n TCP mem (sockstat `mem`, pages, machine-wide) and socket slab \
         (`{}` objects in /proc/slabinfo, machine-wide: struct tcp_sock, socket inode, \
         struct file) cannot tell the proxy's sockets from the others: for the proxies \
         they are the setup's growth minus direct's, i.e. the proxy's 2 sockets per \
         connection; other work on the machine shows up in them as noise, and sockstat \
         moves in per-CPU steps of up to {reserve} pages ({cpus} CPUs: +/- {:.2} \
         KiB/conn).\n RSS + skmem + slab: what a connection costs the proxy's host in \
         all; epoll items and dentries (about 0.3 KiB per socket) are not counted.)\n",
        SOCKET_SLABS.join(", "),
        (reserve * page * cpus as u64) as f64 / 1024.0 / cfg.conns as f64,
    );
    text
}
