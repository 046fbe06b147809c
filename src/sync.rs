//! Background loops of the registry that every mode runs: the liveness sweep, and
//! (single node) the batched heartbeat persistence. A cluster node flushes with its
//! own loop (`cluster/loops.rs`). Each runs until its cancellation token fires; the
//! last flush happens in `app` after the HTTP server has stopped.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

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

/// Sweeps every [`SWEEP_EVERY`] until cancelled.
pub async fn sweep_loop(hub: Hub, cancel: CancellationToken) {
    let mut tick = ticker(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => { hub.sweep().await; }
        }
    }
}

/// Persists heartbeats every [`FLUSH_EVERY`] until cancelled. A failed batch is
/// kept and retried with the next one.
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
    match hub.flush_beats().await {
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
