//! Rebalancing proven on a small fleet of real sockets: the real `switchboard` process,
//! backends on the client crate (real listeners, real heartbeats, honouring `shed`)
//! and a few hundred devices that reconnect with the registry's jitter. When a fourth
//! backend joins three full ones, the devices spread over all four within ±10 % of the
//! mean in at most 10 heartbeat rounds, and then no backend is asked to shed any more.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Options, PATIENCE, process::Server};
use fleet::{FleetBackend, Note, Swarm};
use switchboard_client::Registry;
use tokio::time::Instant;

const SERVICE: &str = "fleet";
/// `ttl_secs` 3: the client heartbeats every second.
const TTL_SECS: u32 = 3;
/// One heartbeat round.
const ROUND: Duration = Duration::from_secs(1);
const DEVICES: usize = 300;
/// Rounds the fourth backend may take to fill up.
const MAX_ROUNDS: u32 = 10;
/// Rounds after converging in which no backend may be asked to shed.
const QUIET_ROUNDS: u32 = 3;
/// How far from the mean a backend may be (the registry's default tolerance).
const TOLERANCE: f64 = 0.10;
/// How often the device-side holdings are looked at.
const POLL: Duration = Duration::from_millis(50);

/// With 300 devices a backend holds ~100, so the default 1 % per heartbeat is a single
/// connection: 75 devices would need far more than 10 rounds to move. 5 % (5 per old
/// backend per heartbeat, 15 a round in all) fills the new one in about 5 rounds. The
/// jitter is short so that shed devices land within the round they were shed in.
const CONFIG: &str = "[rebalance]\nshed_max_ratio = 0.05\nreconnect_jitter_ms = 300\n";
const JITTER: Duration = Duration::from_millis(300);

/// Whether every count is within ±[`TOLERANCE`] of their mean, with at most 1 % of
/// the devices between two connections (shed, waiting out their jitter).
fn balanced(counts: &[usize]) -> bool {
    let total: usize = counts.iter().sum();
    if counts.is_empty() || total * 100 < DEVICES * 99 {
        return false;
    }
    let mean = total as f64 / counts.len() as f64;
    counts.iter().all(|&c| {
        let c = c as f64;
        c <= mean * (1.0 + TOLERANCE) && c >= mean * (1.0 - TOLERANCE)
    })
}

/// Devices held by each backend, in backend order (device-side records).
fn counts(swarm: &Swarm, backends: &[FleetBackend]) -> Vec<usize> {
    let holdings: BTreeMap<u16, usize> = swarm.holdings();
    backends
        .iter()
        .map(|b| holdings.get(&b.addr.port()).copied().unwrap_or(0))
        .collect()
}

async fn backend(registry: &Registry) -> FleetBackend {
    let mut backend = FleetBackend::start(registry.clone(), SERVICE, TTL_SECS)
        .await
        .expect("bind a backend");
    backend
        .registered(PATIENCE)
        .await
        .expect("the backend registers");
    backend
}

/// Polls `swarm` until `done` holds of the counts or `deadline`; the last counts.
async fn wait_counts(
    swarm: &Swarm,
    backends: &[FleetBackend],
    deadline: Instant,
    done: impl Fn(&[usize]) -> bool,
) -> (bool, Vec<usize>) {
    loop {
        let now = counts(swarm, backends);
        if done(&now) {
            return (true, now);
        }
        if Instant::now() >= deadline {
            return (false, now);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every `shed` hint the backends got since the last call: (backend, asked, live).
fn sheds(backends: &mut [FleetBackend]) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for (i, b) in backends.iter_mut().enumerate() {
        for note in b.take_notes() {
            if let Note::Shed { asked, live } = note {
                out.push((i, asked, live));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_backend_fills_within_ten_heartbeats_and_then_nobody_sheds() {
    let server = Server::start_with(Options {
        config: Some(CONFIG.into()),
        ..Options::default()
    });
    let registry = Registry::builder([server.base.clone()])
        .build()
        .expect("a registry URL");
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(backend(&registry).await);
    }
    let swarm = Swarm::start(&registry, SERVICE, DEVICES);
    let deadline = Instant::now() + PATIENCE;
    let all_placed = |c: &[usize]| c.iter().sum::<usize>() == DEVICES;
    let (placed, before) = wait_counts(&swarm, &backends, deadline, all_placed).await;
    assert!(placed, "devices not all placed on 3 backends: {before:?}");

    backends.push(backend(&registry).await);
    let joined = Instant::now();
    // Devices shed in the last round land up to one jitter later.
    let deadline = joined + ROUND * MAX_ROUNDS + JITTER;
    let (converged, spread) = wait_counts(&swarm, &backends, deadline, balanced).await;
    let rounds = joined.elapsed().as_secs_f64() / ROUND.as_secs_f64();
    eprintln!("converged {rounds:.1} rounds after the 4th joined: {before:?} -> {spread:?}");
    assert!(
        converged,
        "not within ±10 % of the mean {MAX_ROUNDS} rounds after the 4th backend joined: \
         {spread:?} (before it joined: {before:?}; sheds: {:?})",
        sheds(&mut backends)
    );

    // Hints already on their way when the counts converged were decided on the counts
    // before; after one round every backend has reported a converged count, and from
    // then on nobody should be asked to shed.
    tokio::time::sleep(ROUND).await;
    let _ = sheds(&mut backends);
    tokio::time::sleep(ROUND * QUIET_ROUNDS).await;
    let late = sheds(&mut backends);
    let after = counts(&swarm, &backends);
    assert!(
        late.is_empty(),
        "backends still asked to shed (backend, asked, live) {late:?} in the {QUIET_ROUNDS} \
         rounds after converging in {rounds:.1} rounds to {spread:?}; now {after:?}"
    );
    assert!(
        balanced(&after),
        "the spread did not hold: {after:?} (converged to {spread:?})"
    );

    swarm.stop(PATIENCE).await;
    for b in backends {
        b.stop(PATIENCE).await;
    }
}
