//! Background loops of the registry: the liveness sweep, the batched heartbeat
//! persistence and, in cluster mode, the sync with the other nodes (changes, pending
//! hand-outs, leadership). Each runs until its cancellation token fires; the last
//! flush happens in `app` after the HTTP server has stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::hub::{CLUSTER_ALIVE_WITHIN, Hub};
use crate::store::ClusterStore;

/// How often expiry, removal and self-preservation are judged. Bounds how late an
/// expiry shows in `version`.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How often heartbeats are written to an embedded store, in one batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often a cluster node writes its heartbeat batch and exchanges pending
/// hand-outs: the delay before other nodes see a heartbeat or a hand-out.
pub const CLUSTER_FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How often a cluster node pulls changes when no notification wakes it sooner.
pub const CLUSTER_SYNC_EVERY: Duration = Duration::from_millis(250);

/// The least time between two syncs: notifications arriving meanwhile are absorbed
/// by the next one instead of costing a read each.
pub const CLUSTER_SYNC_MIN_GAP: Duration = Duration::from_millis(10);

/// How often a cluster node re-reads every row, in case anything slipped past.
pub const CLUSTER_FULL_SYNC_EVERY: Duration = Duration::from_secs(30);

/// How often a cluster node says it is alive and checks the removal leadership.
pub const CLUSTER_NODE_EVERY: Duration = Duration::from_secs(1);

/// Tombstones and stale hand-out rows older than this are purged by the leader.
pub const CLUSTER_PURGE_AFTER: Duration = Duration::from_secs(600);

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

/// Persists heartbeats until cancelled (and, in cluster mode, exchanges pending
/// hand-outs). A failed batch is kept and retried with the next one.
pub async fn flush_loop(hub: Hub, cancel: CancellationToken) {
    let every = if hub.cluster().is_some() {
        CLUSTER_FLUSH_EVERY
    } else {
        FLUSH_EVERY
    };
    let mut tick = ticker(every);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                match hub.flush_beats().await {
                    Ok(saved) if failing => {
                        failing = false;
                        tracing::info!(saved, "heartbeat batches persisted again");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        failing = true;
                        tracing::warn!(%err, "heartbeat batch not persisted; will retry");
                    }
                }
                if let Err(err) = hub.exchange_pending().await {
                    tracing::debug!(%err, "pending hand-outs not exchanged");
                }
            }
        }
    }
}

/// Cluster mode: pulls changes when notified or every [`CLUSTER_SYNC_EVERY`], and
/// everything every [`CLUSTER_FULL_SYNC_EVERY`].
pub async fn cluster_sync_loop(
    hub: Hub,
    cluster: Arc<dyn ClusterStore>,
    cancel: CancellationToken,
) {
    let mut last_full = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = cluster.next_notification() => {}
            () = tokio::time::sleep(CLUSTER_SYNC_EVERY) => {}
        }
        let full = last_full.elapsed() >= CLUSTER_FULL_SYNC_EVERY || failing;
        match hub.sync(full).await {
            Ok(_) => {
                failing = false;
                if full {
                    last_full = Instant::now();
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(CLUSTER_SYNC_MIN_GAP) => {}
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cluster sync failed; retrying");
                }
                failing = true;
                // Do not spin on a dead database.
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(CLUSTER_SYNC_EVERY) => {}
                }
            }
        }
    }
}

/// Cluster mode: records this node as alive, takes or keeps the removal leadership,
/// and (as leader) purges old tombstones.
pub async fn cluster_node_loop(
    hub: Hub,
    cluster: Arc<dyn ClusterStore>,
    cancel: CancellationToken,
) {
    let mut tick = ticker(CLUSTER_NODE_EVERY);
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = cluster.node_alive(hub.node(), CLUSTER_ALIVE_WITHIN).await {
            tracing::debug!(%err, "could not record this node as alive");
        }
        let leading = cluster.try_lead().await;
        hub.set_leading(leading);
        if leading && last_purge.elapsed() >= CLUSTER_PURGE_AFTER / 10 {
            last_purge = Instant::now();
            match cluster.purge(CLUSTER_PURGE_AFTER).await {
                Ok(n) if n > 0 => tracing::info!(tombstones = n, "purged old tombstones"),
                Ok(_) => {}
                Err(err) => tracing::debug!(%err, "purge failed"),
            }
        }
    }
}
