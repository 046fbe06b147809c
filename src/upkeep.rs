//! The registry's background upkeep loops (the work is the hub's, `hub/upkeep.rs`):
//! the liveness sweep, which every mode runs, and (single node) the batched heartbeat
//! persistence, each instance's beat at most
//! every [`persist_gap`]. A cluster node flushes with its
//! own loop (`cluster/loops.rs`). Each runs until its cancellation token fires; the
//! last flush happens in `app` after the HTTP server has stopped.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::systemd::Watchdog;

/// How often expiry, removal and self-preservation are judged. Bounds how late an
/// expiry shows in `version`.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How often heartbeats are written to an embedded store, in one batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Sweeps every [`SWEEP_EVERY`] until cancelled. It pings systemd's watchdog, when
/// one is set, after each sweep: the sweep takes every service's lock and runs on the
/// runtime the API serves from, so a stuck lock or a starved runtime stops it first,
/// and the pings with it.
pub async fn sweep_loop(hub: Hub, cancel: CancellationToken, mut watchdog: Option<Watchdog>) {
    let mut tick = ticker(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                hub.sweep().await;
                if let Some(watchdog) = &mut watchdog {
                    watchdog.tick();
                }
            }
        }
    }
}

/// The longest a heartbeat newer than its instance's stored one waits to be written:
/// stored counts are never older than this after a crash, and a failing store shows
/// in the log within it.
pub const PERSIST_AT_LEAST_EVERY: Duration = Duration::from_secs(8);

/// How long after its last stored heartbeat an instance's next one is written (by
/// its TTL in seconds): half the TTL, at most [`PERSIST_AT_LEAST_EVERY`]. A restart
/// hands every stored instance out for a TTL's grace whatever the age of its stored
/// beat (SPEC 3), and the backend's next heartbeat, within a third of the TTL,
/// replaces the count, so a stored beat needs only to be roughly current. Writing
/// every beat cost a row per heartbeat in a fleet larger than the heartbeat rate: at
/// 100k instances one flush updated 55,092 rows and took 1.07 s (`http_cost` bench),
/// and a narrower table did not make a row much cheaper (SQLite's per-row work is
/// the cost, not the pages). At the advised period (a third of a 15 s TTL) every
/// second heartbeat is written. A beat held back goes once it has waited the gap with
/// no newer one, and the last flush at shutdown writes them all.
pub fn persist_gap(ttl_secs: u32) -> crate::registry::Millis {
    let cap = PERSIST_AT_LEAST_EVERY.as_millis() as u64;
    (u64::from(ttl_secs) * 1000 / 2).min(cap)
}

/// A single node's store serves only its own restart, so a moved count waits its
/// gap like any other beat: the next heartbeat after a restart replaces it anyway.
pub const PERSIST_RULE: crate::registry::table::BeatRule = crate::registry::table::BeatRule {
    min_gap: persist_gap,
    count_moved: |_stored, _now| false,
};

/// Persists heartbeats every [`FLUSH_EVERY`] until cancelled, each instance's at most
/// every [`persist_gap`]. A failed batch is kept and retried with the next one.
pub async fn flush_loop(hub: Hub, cancel: CancellationToken) {
    let mut tick = ticker(FLUSH_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => flush_once(&hub, &mut failing).await,
        }
    }
}

/// One heartbeat batch, logged: a failure once per outage's batch, and the first
/// success after one (`failing` carries that state between calls).
pub async fn flush_once(hub: &Hub, failing: &mut bool) {
    match hub.flush_due_beats(&PERSIST_RULE).await {
        Ok(saved) if *failing => {
            *failing = false;
            tracing::info!(saved, "heartbeat batches persisted again");
        }
        Ok(_) => {}
        Err(err) => {
            *failing = true;
            tracing::warn!(%err, "heartbeat batch not persisted; will retry");
        }
    }
}
