//! Background loops of the registry: the liveness sweep and the batched heartbeat
//! persistence. Each runs until its cancellation token fires; the last flush happens
//! in `app` after the HTTP server has stopped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// How often expiry, removal and self-preservation are judged. Bounds how late an
/// expiry shows in `version`.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How often heartbeats are written to the store, in one batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Sweeps every [`SWEEP_EVERY`] until cancelled.
pub async fn sweep_loop(hub: Hub, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => { hub.sweep().await; }
        }
    }
}

/// Persists heartbeats every [`FLUSH_EVERY`] until cancelled. A failed batch is kept
/// and retried with the next one.
pub async fn flush_loop(hub: Hub, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(err) = hub.flush_beats().await {
                    tracing::warn!(%err, "heartbeat batch not persisted; will retry");
                }
            }
        }
    }
}
