//! Phase 2, connection rate: `SB_BENCH_WORKERS` loops of connect, 16-byte echo, close,
//! with the client closing first (2a) or the backend (2b), and tables 2a and 2b.
//!
//! Must not touch the other phases' figures; the goals are `report.rs`'s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::backends::echo_once;
use crate::load::{Load, Rate, RateRun, join_loads, measured, rate_rows, summary_rates};
use crate::proxy::{Proxy, Setup};
use crate::report::{PerSetup, Summary, Table};
use crate::rounds::run_rounds;
use crate::{Config, MAX_CONNS_PER_WORKER, OP_TIMEOUT};

/// Who sends the first FIN in the connection-rate test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The client closes right after reading the echo (as devices do when done). The
    /// client's ports then sit in TIME_WAIT, and on loopback the kernel's search for a
    /// free ephemeral port (`__inet_hash_connect`) becomes a large shared cost.
    Client,
    /// The backend closes after echoing; the client reads the echo, waits for the
    /// FIN, then closes. TIME_WAIT lands on the listening sides, not on ephemeral ports.
    Backend,
}

/// One connection of the rate test: connect, 16 B echo, (FIN from the backend,) close.
async fn rate_once(addr: SocketAddr, closer: Closer) -> Result<()> {
    let mut s = echo_once(addr).await?;
    if closer == Closer::Backend {
        let mut more = [0u8; 1];
        if s.read(&mut more).await? != 0 {
            bail!("expected the backend's FIN");
        }
    }
    drop(s);
    Ok(())
}

/// `workers` loops of connect/echo/close for `secs`.
async fn connection_load(addr: SocketAddr, closer: Closer, workers: usize, secs: f64) -> Load {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(async move {
            let mut load = Load::default();
            for _ in 0..MAX_CONNS_PER_WORKER {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                match tokio::time::timeout(OP_TIMEOUT, rate_once(addr, closer)).await {
                    Ok(Ok(())) => load.note_ok(start),
                    outcome => {
                        load.note_error(match outcome {
                            Ok(Err(err)) => format!("{err:#}"),
                            _ => "timed out".to_owned(),
                        });
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            load
        });
    }
    join_loads(set).await
}

fn measure_rate(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    setup: Setup,
    echo: SocketAddr,
    closer: Closer,
) -> Result<RateRun> {
    let proxy = Proxy::start(setup, echo, cfg)?;
    let listen = proxy.listen;
    measured(runtime, &proxy, cfg.secs as f64, |secs| {
        connection_load(listen, closer, cfg.workers, secs)
    })
}

/// Phase 2a or 2b (by `closer`) over the rounds: its table, and its rates in `summary`.
pub fn phase_rate(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    echo: SocketAddr,
    closer: Closer,
    summary: &mut Summary,
) -> String {
    let label = format!("rate, {closer:?} closes");
    let runs = run_rounds(cfg, &cfg.setups, &label, |setup| {
        let r = measure_rate(cfg, runtime, setup, echo, closer);
        // Let the TIME_WAIT churn of one setup settle before the next.
        std::thread::sleep(Duration::from_millis(500));
        r
    });
    let results: PerSetup<Rate> = runs
        .iter()
        .map(|(s, r)| (*s, Rate::from_rounds(r, cfg.clk_tck)))
        .collect();
    let title = match closer {
        Closer::Client => format!(
            "2a. Connection rate, client closes first ({} workers x {} s: connect, \
             write 16 B, read the echo, close; median of {} round(s))",
            cfg.workers, cfg.secs, cfg.rounds
        ),
        Closer::Backend => format!(
            "2b. Connection rate, backend closes first ({} workers x {} s: connect, \
             write 16 B, read the echo, read the backend's FIN, close; median of {} \
             round(s))",
            cfg.workers, cfg.secs, cfg.rounds
        ),
    };
    let mut t = Table::new(&title, &cfg.setups);
    rate_rows(&mut t, &results, "connections", "conn");
    t.row("errors", &results, |r| {
        r.map_or_else(|| "err".to_owned(), |r| r.errors.to_string())
    });
    let rates = summary_rates(&results);
    match closer {
        Closer::Client => summary.rate = rates,
        Closer::Backend => summary.rate_backend_closes = rates,
    }
    t.render()
}
