//! The cluster node's background loops: heartbeat batches (only the beats liveness
//! across nodes needs, [`super::beat_gap`]), the heartbeat sync and pending hand-outs;
//! the row sync (notifications, periodic pulls, full reads); and the node loop
//! (alive, removal leadership, purge). Each runs until its cancellation token fires;
//! every store call in them is bounded.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ALIVE_WITHIN, ClusterNode, STORE_TIMEOUT};
use crate::store::bounded;

/// How often the node writes its heartbeat batch and exchanges pending hand-outs:
/// the delay before other nodes see a heartbeat or a hand-out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How often the node reads the heartbeats other nodes wrote: one sequential scan of
/// the instances table (heartbeat writes touch no index, so none can find them).
pub const BEAT_SYNC_EVERY: Duration = Duration::from_millis(500);

/// How often the node pulls changes when no notification wakes it sooner.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

/// The least time between two syncs: notifications arriving meanwhile are absorbed
/// by the next one instead of costing a read each.
pub const SYNC_MIN_GAP: Duration = Duration::from_millis(10);

/// How often the node re-reads every row, in case anything slipped past.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(30);

/// How often the node says it is alive and checks the removal leadership.
pub const NODE_EVERY: Duration = Duration::from_secs(1);

/// Tombstones and stale hand-out rows older than this are purged by the leader.
pub const PURGE_AFTER: Duration = Duration::from_secs(600);

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Every [`FLUSH_EVERY`] until cancelled: persists the heartbeats that are due (see
/// [`super::beat_gap`]) and exchanges pending hand-outs; every [`BEAT_SYNC_EVERY`],
/// reads the heartbeats other nodes wrote. A failed heartbeat batch is kept and
/// retried with the next one; a failed heartbeat sync is read again from the same
/// horizon.
pub async fn flush_loop(node: ClusterNode, cancel: CancellationToken) {
    let mut tick = ticker(FLUSH_EVERY);
    let mut failing = false;
    let mut last_beat_sync = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        flush_due(&node, &mut failing).await;
        if let Err(err) = node.exchange_pending().await {
            tracing::debug!(%err, "pending hand-outs not exchanged");
        }
        if last_beat_sync.elapsed() >= BEAT_SYNC_EVERY {
            last_beat_sync = Instant::now();
            if let Err(err) = node.sync_beats().await {
                tracing::debug!(%err, "heartbeats of other nodes not read");
            }
        }
    }
}

/// One batch of due heartbeats, logged like the single node's (`upkeep::flush_once`).
async fn flush_due(node: &ClusterNode, failing: &mut bool) {
    match node.hub().flush_due_beats(&super::BEAT_RULE).await {
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

/// Pulls changes when notified or every [`SYNC_EVERY`], and everything every
/// [`FULL_SYNC_EVERY`] (or after a failure), until cancelled.
pub async fn sync_loop(node: ClusterNode, cancel: CancellationToken) {
    let store = std::sync::Arc::clone(&node.inner.store);
    let mut last_full = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = store.next_notification() => {}
            () = tokio::time::sleep(SYNC_EVERY) => {}
        }
        let full = last_full.elapsed() >= FULL_SYNC_EVERY || failing;
        let pause = match node.sync(full).await {
            Ok(_) => {
                failing = false;
                if full {
                    last_full = Instant::now();
                }
                SYNC_MIN_GAP
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cluster sync failed; retrying");
                }
                failing = true;
                // Do not spin on a dead database.
                SYNC_EVERY
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Records this node as alive, takes or keeps the removal leadership, and (as
/// leader) purges old tombstones, every [`NODE_EVERY`] until cancelled.
pub async fn node_loop(node: ClusterNode, cancel: CancellationToken) {
    let store = std::sync::Arc::clone(&node.inner.store);
    let mut tick = ticker(NODE_EVERY);
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = bounded(STORE_TIMEOUT, store.node_alive(node.name(), ALIVE_WITHIN)).await
        {
            tracing::debug!(%err, "could not record this node as alive");
        }
        // An unanswered leadership check is a lost leadership: another node may
        // take the lock meanwhile, and two removers must never overlap.
        let leading = tokio::time::timeout(STORE_TIMEOUT, store.try_lead())
            .await
            .unwrap_or(false);
        if node.hub().set_may_remove(leading) {
            tracing::info!(node = %node.name(), leading, "removal leadership changed");
        }
        if leading && last_purge.elapsed() >= PURGE_AFTER / 10 {
            last_purge = Instant::now();
            match bounded(STORE_TIMEOUT, store.purge(PURGE_AFTER)).await {
                Ok(n) if n > 0 => tracing::info!(tombstones = n, "purged old tombstones"),
                Ok(_) => {}
                Err(err) => tracing::debug!(%err, "purge failed"),
            }
        }
    }
}
