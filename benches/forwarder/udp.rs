//! Phase 4, UDP request rate: `SB_BENCH_UDP_CLIENTS` connected client sockets in a
//! closed loop of numbered 64-byte datagrams through the setups that proxy UDP, a
//! session per client (4a) or per request (4b), the share each backend received, and
//! tables 4a and 4b.
//!
//! Must not touch the other phases' figures; the goals are `report.rs`'s.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::backends::UdpEcho;
use crate::load::{Load, Rate, RateRun, join_loads, measured, rate_rows, summary_rates};
use crate::proxy::{Proxy, Sessions, Setup};
use crate::report::{PerSetup, Summary, Table, find, fmt};
use crate::rounds::run_rounds;
use crate::support::report::join;
use crate::{Config, MAX_CONNS_PER_WORKER};

/// Size of each UDP request (and of its echo).
const UDP_DATAGRAM: usize = 64;

/// How long a UDP client waits for its echo before it counts the request as lost.
const UDP_REPLY_TIMEOUT: Duration = Duration::from_millis(200);

/// A client socket of the UDP test, connected to its target, with its sequence.
struct UdpClient {
    socket: UdpSocket,
    next: AtomicU64,
}

/// `n` clients, each connected to one of `targets` in turn.
async fn udp_clients(targets: &[SocketAddr], n: usize) -> Result<Vec<Arc<UdpClient>>> {
    let mut clients = Vec::with_capacity(n);
    for target in targets.iter().cycle().take(n) {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(target).await?;
        let next = AtomicU64::new(0);
        clients.push(Arc::new(UdpClient { socket, next }));
    }
    Ok(clients)
}

/// Every client in a closed loop for `secs`: send a numbered datagram, wait for its
/// echo (up to `UDP_REPLY_TIMEOUT`; echoes of earlier numbers are late), again.
async fn udp_load(clients: &[Arc<UdpClient>], backends: &[UdpEcho; 2], secs: f64) -> Load {
    let counts = || {
        let sent = clients.iter().map(|c| c.next.load(Ordering::Relaxed));
        let received = backends.iter().map(|b| b.received.load(Ordering::Relaxed));
        (sent.sum::<u64>(), received.sum::<u64>())
    };
    let before = counts();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for client in clients {
        let client = Arc::clone(client);
        set.spawn(async move {
            let mut load = Load::default();
            let (mut out, mut back) = ([0x5au8; UDP_DATAGRAM], [0u8; UDP_DATAGRAM + 1]);
            for _ in 0..MAX_CONNS_PER_WORKER {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                let seq = client.next.fetch_add(1, Ordering::Relaxed).to_le_bytes();
                out[..8].copy_from_slice(&seq);
                if let Err(err) = client.socket.send(&out).await {
                    load.note_error(format!("send: {err}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let give_up = tokio::time::Instant::from_std(start + UDP_REPLY_TIMEOUT);
                for _ in 0..1000 {
                    match tokio::time::timeout_at(give_up, client.socket.recv(&mut back)).await {
                        Err(_) => load.lost += 1,
                        Ok(Err(err)) => load.note_error(format!("recv: {err}")),
                        Ok(Ok(n)) if n == UDP_DATAGRAM && back[..8] == seq => load.note_ok(start),
                        Ok(Ok(_)) => {
                            load.late += 1;
                            continue;
                        }
                    }
                    break;
                }
            }
            load
        });
    }
    let mut load = join_loads(set).await;
    // Every request was answered or given up: none is on its way any more.
    let after = counts();
    load.unreached = (after.0 - before.0).saturating_sub(after.1 - before.1);
    load
}

/// One round of phase 4 for one setup.
struct UdpRound {
    run: RateRun,
    /// The share of the requests the first backend received.
    share: f64,
    /// The warnings and errors the proxy logged.
    log: Vec<String>,
}

fn measure_udp(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    setup: Setup,
    backends: &[UdpEcho; 2],
    sessions: Sessions,
) -> Result<UdpRound> {
    let addrs = [backends[0].addr, backends[1].addr];
    let proxy = Proxy::start_udp(setup, addrs, sessions, cfg)?;
    let targets = match setup {
        Setup::Direct => addrs.to_vec(),
        _ => vec![proxy.listen],
    };
    let clients = runtime.block_on(udp_clients(&targets, cfg.udp_clients))?;
    let received = || {
        backends
            .each_ref()
            .map(|b| b.received.load(Ordering::Relaxed))
    };
    let before = received();
    let run = measured(runtime, &proxy, cfg.udp_secs as f64, |secs| {
        udp_load(&clients, backends, secs)
    })?;
    let [a, b] = received();
    let first = a.saturating_sub(before[0]) as f64;
    let share = first / (first + b.saturating_sub(before[1]) as f64);
    Ok(UdpRound {
        run,
        share,
        log: proxy.log_problems(),
    })
}

/// Phase 4a or 4b (by `sessions`) over the rounds for the setups that proxy UDP: its
/// table, and its rates in `summary`.
pub fn phase_udp(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    backends: &[UdpEcho; 2],
    sessions: Sessions,
    summary: &mut Summary,
) -> String {
    let setups: Vec<Setup> = cfg
        .setups
        .iter()
        .copied()
        .filter(|&s| !matches!(s, Setup::Haproxy | Setup::NginxSpec))
        .collect();
    let label = format!("udp, {sessions:?}");
    let runs = run_rounds(cfg, &setups, &label, |setup| {
        measure_udp(cfg, runtime, setup, backends, sessions)
    });
    let results: PerSetup<Rate> = runs
        .iter()
        .map(|(s, r)| {
            let rounds: Vec<RateRun> = r.iter().map(|u| u.run.clone()).collect();
            (*s, Rate::from_rounds(&rounds, cfg.clk_tck))
        })
        .collect();
    let (what, config) = match sessions {
        Sessions::PerClient => (
            "4a. UDP request rate, a session per client",
            "each client keeps its address, so the proxy keeps one session (one backend \
             socket) per client all run: Switchboard without udp_responses, nginx without \
             proxy_responses",
        ),
        Sessions::PerRequest => (
            "4b. UDP request rate, a session per request",
            "Switchboard udp_responses = 1, nginx proxy_responses 1: the session ends at \
             its reply, so every request picks a backend and opens a new backend socket",
        ),
    };
    let title = format!(
        "{what} ({} clients x {} s, closed loop: send {UDP_DATAGRAM} B, wait for the echo; \
         {config}; median of {} round(s))",
        cfg.udp_clients, cfg.udp_secs, cfg.rounds
    );
    let mut t = Table::new(&title, &setups);
    rate_rows(&mut t, &results, "requests", "req");
    t.row("latency p99.9 / max us", &results, |r| {
        r.map_or("-".to_owned(), |r| {
            format!("{:.0} / {:.0}", r.p999_us, r.max_us)
        })
    });
    let nginx = find(&results, Setup::Nginx).map(|r| r.per_sec);
    t.row("x nginx", &results, |r| {
        fmt(r.zip(nginx).map(|(r, n)| r.per_sec / n), 2)
    });
    t.row("lost (no echo in 200 ms)", &results, |r| {
        r.map_or("-".to_owned(), |r| r.lost.to_string())
    });
    t.row("  of them at no backend", &results, |r| {
        r.map_or("-".to_owned(), |r| r.unreached.to_string())
    });
    t.row("late echoes", &results, |r| {
        r.map_or("-".to_owned(), |r| r.late.to_string())
    });
    t.row("errors", &results, |r| {
        r.map_or_else(|| "err".to_owned(), |r| r.errors.to_string())
    });
    let rounds: PerSetup<&[UdpRound]> = runs
        .iter()
        .map(|(s, r)| (*s, (!r.is_empty()).then_some(r.as_slice())))
        .collect();
    t.row("% at backend 1, rounds", &rounds, |r| {
        r.map_or("-".to_owned(), |r| {
            join(*r, "/", |u| format!("{:.0}", u.share * 100.0))
        })
    });
    t.row("proxy log warn+error lines", &rounds, |r| {
        r.map_or("-".to_owned(), |r| {
            join(*r, "/", |u| u.log.len().to_string())
        })
    });
    let rates = summary_rates(&results);
    match sessions {
        Sessions::PerClient => summary.udp_session = rates,
        Sessions::PerRequest => summary.udp_request = rates,
    }
    let mut text = t.render();
    for (setup, r) in &runs {
        let lines = r.iter().flat_map(|u| &u.log).take(3);
        for line in lines {
            let _ = writeln!(text, "  {} log: {line}", setup.name());
        }
    }
    if cfg.setups.contains(&Setup::Haproxy) {
        text.push_str("(HAProxy: left out, its community edition proxies no UDP)\n");
    }
    if cfg.setups.contains(&Setup::NginxSpec) {
        text.push_str("(nginx hc+ka: left out, its two directives are TCP's)\n");
    }
    text
}
