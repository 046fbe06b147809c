//! Cluster mode: one registry node among several that share a PostgreSQL store.
//!
//! Owns the cluster protocol: the sync by transaction-id horizon (and the periodic
//! full read, where an instance missing twice goes), the heartbeat sync by a horizon
//! of its own and how often a heartbeat must reach the store ([`beat_gap`]), the
//! exchange of pending hand-outs, the removal leadership, the cluster-wide restart
//! grace, and holding liveness time while the store is unreachable. Drives the [`Hub`] through its
//! memory-only primitives; every store call is bounded by a timeout and no lock is
//! held across one. Knows no HTTP and no ranking math. The loops are in `loops.rs`.

mod loops;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hub::Hub;
use crate::lease;
use crate::locks::lock;
use crate::registry::Millis;
use crate::store::{ClusterStore, StoreError, SyncedRow, bounded};

pub use loops::{BEAT_SYNC_EVERY, FLUSH_EVERY, flush_loop, node_loop, sync_loop};

/// A node seen within this long is alive (for the cluster-wide restart grace).
pub const ALIVE_WITHIN: Duration = Duration::from_secs(10);

/// The longest a sync may take before the store counts as unreachable.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// How often this node rewrites a pending count that did not change, so that the other
/// nodes (which count rows written within the last 15 s) keep seeing it.
pub const PENDING_REFRESH: Duration = Duration::from_secs(5);

/// The longest any other cluster store call may take (the registry's own bound).
pub use crate::store::health::STORE_TIMEOUT;

/// How much newer than the last stored heartbeat of an instance a heartbeat must be
/// before this node writes it (ms), for a TTL of `ttl_secs`: half the TTL, less the
/// time a written beat takes to reach the other nodes (one [`FLUSH_EVERY`] here, one
/// [`BEAT_SYNC_EVERY`] there).
///
/// Why that is enough: another node's view of an instance is the newest stored beat.
/// A beat is stored at most `gap` after the previous stored one plus one heartbeat
/// period `P` (the first heartbeat past the gap is written), so the other nodes see
/// a heartbeat age of at most `gap + P + FLUSH_EVERY + BEAT_SYNC_EVERY` = `ttl / 2 +
/// P`; with the advised `P = ttl / 3` that is `5/6` of the TTL, and a live instance
/// never expires anywhere while its heartbeats come less than `ttl / 6` late. With
/// `P = ttl / 3` every second heartbeat is written (one row per two heartbeats); a
/// backend that heartbeats more often is written less often still. A beat that is
/// not written waits, and goes once it has waited `gap` with no newer one, so the
/// last heartbeat of an instance that stops is stored too. Short TTLs (under 1.5 s
/// here) get no throttling at all: every beat is written, as before.
pub fn beat_gap(ttl_secs: u32) -> Millis {
    let lag = FLUSH_EVERY + BEAT_SYNC_EVERY;
    (u64::from(ttl_secs) * 1000 / 2).saturating_sub(lag.as_millis() as u64)
}

/// Whether a heartbeat's count moved far enough from the stored one to be written
/// at once: by more than 1/64 of the stored count (any change below 64). The other
/// nodes rank by the stored count, and a node releases its pending hand-outs once a
/// backend's heartbeat counts them, so a count held back for [`beat_gap`] would hide
/// those devices from every other node (a device that landed through one node was
/// invisible to the other for up to half a TTL). Within 1/64 a held-back count
/// shifts no ranking by more than the rebalancing tolerance does, and a fleet whose
/// counts barely move keeps the gap's saving.
pub fn count_moved(stored: u64, now: u64) -> bool {
    stored.abs_diff(now) > stored / 64
}

/// When a cluster node writes a heartbeat: [`beat_gap`] and [`count_moved`].
pub const BEAT_RULE: crate::registry::table::BeatRule = crate::registry::table::BeatRule {
    min_gap: beat_gap,
    count_moved,
};

/// Cheap-to-clone handle on this node's cluster state.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<NodeState>,
}

struct NodeState {
    hub: Hub,
    store: Arc<dyn ClusterStore>,
    /// This node's name in the cluster tables.
    name: String,
    /// Where the next incremental sync starts (a transaction-id horizon).
    horizon: AtomicU64,
    /// Where the next heartbeat sync starts (a transaction-id horizon of heartbeat
    /// writes).
    beat_horizon: AtomicU64,
    /// When the store last answered a sync (monotonic ms).
    last_sync_ok: AtomicU64,
    /// This node's published non-zero pending counts, and when each was last written
    /// (monotonic ms).
    published: Mutex<HashMap<String, (u64, Millis)>>,
    /// The other nodes' pending sums as last applied to the tables.
    remote: Mutex<HashMap<String, u64>>,
    /// Set by a full row sync: the next exchange sets every instance's remote sum.
    pending_reset: AtomicBool,
    /// Ids missing from the previous full sync: removed if missing again.
    missing_once: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// A node over `hub` and the shared `store`. The hub stops removing expired
    /// instances until this node wins the removal leadership.
    pub fn new(hub: Hub, store: Arc<dyn ClusterStore>) -> Self {
        hub.set_may_remove(false);
        ClusterNode {
            inner: Arc::new(NodeState {
                hub,
                store,
                name: lease::new_id(),
                horizon: AtomicU64::new(0),
                beat_horizon: AtomicU64::new(0),
                last_sync_ok: AtomicU64::new(0),
                published: Mutex::new(HashMap::new()),
                remote: Mutex::new(HashMap::new()),
                pending_reset: AtomicBool::new(true),
                missing_once: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// This node's name in the cluster tables.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The hub this node keeps in sync.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Start: when no other node is alive the whole cluster restarted, and every
    /// instance gets its grace period in the store; otherwise the store's heartbeat
    /// ages stand. Then a full sync. Returns how many instances were read.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn restore(&self) -> Result<usize, StoreError> {
        let store = &self.inner.store;
        let others = bounded(
            STORE_TIMEOUT,
            store.node_alive(&self.inner.name, ALIVE_WITHIN),
        )
        .await?;
        if !others {
            let n = bounded(STORE_TIMEOUT, store.grant_grace()).await?;
            tracing::info!(
                instances = n,
                "no other registry node alive: cluster restart grace granted"
            );
        }
        let batch = bounded(STORE_TIMEOUT, store.changes(None)).await?;
        self.synced_ok();
        let count = batch.rows.len();
        self.apply_batch(batch.rows, true);
        self.inner.horizon.store(batch.horizon, Ordering::Relaxed);
        // The full read carried every heartbeat up to its snapshot.
        self.inner
            .beat_horizon
            .store(batch.horizon, Ordering::Relaxed);
        Ok(count)
    }

    /// How long ago the store last answered a sync.
    pub fn since_last_sync(&self) -> Duration {
        let now = self.inner.hub.clock().now();
        let at = self.inner.last_sync_ok.load(Ordering::Relaxed);
        Duration::from_millis(now.saturating_sub(at))
    }

    fn synced_ok(&self) {
        let now = self.inner.hub.clock().now();
        self.inner.last_sync_ok.store(now, Ordering::Relaxed);
    }

    /// Pulls the store's changes since the last sync (or everything, with `full`)
    /// into memory. Unreachable store: liveness time is held until it answers again.
    ///
    /// # Errors
    /// [`StoreError`] when the store did not answer within [`SYNC_TIMEOUT`].
    pub async fn sync(&self, full: bool) -> Result<usize, StoreError> {
        let horizon = (!full).then(|| self.inner.horizon.load(Ordering::Relaxed));
        // A short limit: an unanswered sync is how a node learns the store is gone.
        match bounded(SYNC_TIMEOUT, self.inner.store.changes(horizon)).await {
            Ok(batch) => {
                self.synced_ok();
                if self.inner.hub.release_time() {
                    tracing::info!("cluster store reachable again");
                }
                let count = batch.rows.len();
                self.apply_batch(batch.rows, full);
                self.inner.horizon.store(batch.horizon, Ordering::Relaxed);
                Ok(count)
            }
            Err(err) => {
                // Stop liveness time at the last good sync: answers keep the last
                // known state instead of expiring everyone this node no longer hears
                // about.
                let at = self.inner.last_sync_ok.load(Ordering::Relaxed);
                if self.inner.hub.hold_time(at) {
                    tracing::warn!("cluster store unreachable: serving the last known state");
                }
                Err(err)
            }
        }
    }

    /// Pulls the heartbeats other nodes wrote since the last heartbeat sync into memory.
    /// Returns how many changed an instance here.
    ///
    /// # Errors
    /// [`StoreError`] when the store did not answer within [`SYNC_TIMEOUT`]; the next
    /// call reads from the same horizon, so nothing is skipped.
    pub async fn sync_beats(&self) -> Result<usize, StoreError> {
        let horizon = self.inner.beat_horizon.load(Ordering::Relaxed);
        let batch = bounded(SYNC_TIMEOUT, self.inner.store.beats(Some(horizon))).await?;
        let mut beats: Vec<(&str, &str, u64, Millis)> = batch
            .beats
            .iter()
            .map(|b| (b.service.as_str(), b.id.as_str(), b.connections, b.age_ms))
            .collect();
        // One table lock per service and chunk.
        beats.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let changed = self.inner.hub.apply_synced_beats(&beats);
        self.inner
            .beat_horizon
            .store(batch.horizon, Ordering::Relaxed);
        Ok(changed)
    }

    fn apply_batch(&self, rows: Vec<SyncedRow>, full: bool) {
        let hub = &self.inner.hub;
        let now = hub.liveness_now();
        let mut seen: HashSet<String> = HashSet::new();
        for row in rows {
            let service = row.record.service.clone();
            if row.deleted {
                hub.forget(&service, &row.record.id);
                continue;
            }
            let age = row.age_ms;
            match crate::store::encoding::instance_from_record(row.record, now) {
                Ok(mut instance) => {
                    instance.last_seen = now.saturating_sub(age);
                    if full {
                        seen.insert(instance.id.clone());
                    }
                    hub.apply_synced(&service, instance);
                }
                Err(err) => tracing::error!(%err, "skipping unreadable synced instance"),
            }
        }
        if full {
            self.forget_missing_twice(&seen);
            self.inner.pending_reset.store(true, Ordering::Relaxed);
        }
    }

    /// A full read is a snapshot: an instance missing from it may have been
    /// registered here just after it was taken, so only one missing twice goes.
    fn forget_missing_twice(&self, seen: &HashSet<String>) {
        let hub = &self.inner.hub;
        let mut missing_once = lock(&self.inner.missing_once);
        let mut missing_now = HashSet::new();
        for (service, ids) in hub.registered_ids() {
            for id in ids.into_iter().filter(|id| !seen.contains(id)) {
                if missing_once.contains(&id) {
                    hub.forget(&service, &id);
                } else {
                    missing_now.insert(id);
                }
            }
        }
        *missing_once = missing_now;
    }

    /// Publishes this node's pending hand-outs and takes the other nodes', as deltas:
    /// only counts that changed since the last round are written (and unchanged ones
    /// once per [`PENDING_REFRESH`], so that other nodes' 15 s window keeps them), and
    /// only instances whose remote sum changed are touched here. Every full row sync
    /// sets every instance's remote sum again (see [`Self::sync`]), so an instance
    /// this node learnt of after its count arrived has it within one full read, and
    /// is offered again each round until then.
    ///
    /// # Errors
    /// [`StoreError`] when the store did not answer.
    pub async fn exchange_pending(&self) -> Result<(), StoreError> {
        let hub = &self.inner.hub;
        let now = hub.clock().now();
        let counted = hub.local_pending();
        let mine: Vec<(String, u64)> = {
            let published = lock(&self.inner.published);
            let now_ids: HashSet<&str> = counted.iter().map(|(id, _)| id.as_str()).collect();
            let changed = counted.iter().filter(|(id, n)| {
                published.get(id).is_none_or(|&(sent, at)| {
                    sent != *n || now.saturating_sub(at) >= PENDING_REFRESH.as_millis() as u64
                })
            });
            // Withdraw what went back to zero since the last round.
            let withdrawn = published
                .keys()
                .filter(|id| !now_ids.contains(id.as_str()))
                .map(|id| (id.clone(), 0));
            changed.cloned().chain(withdrawn).collect()
        };
        let remote = bounded(
            STORE_TIMEOUT,
            self.inner.store.exchange_pending(&self.inner.name, &mine),
        )
        .await?;
        {
            let mut published = lock(&self.inner.published);
            for (id, n) in mine {
                if n == 0 {
                    published.remove(&id);
                } else {
                    published.insert(id, (n, now));
                }
            }
        }
        let remote: HashMap<String, u64> = remote.into_iter().collect();
        if self.inner.pending_reset.swap(false, Ordering::Relaxed) {
            hub.set_remote_pending(&remote);
            *lock(&self.inner.remote) = remote;
            return Ok(());
        }
        let mut applied = lock(&self.inner.remote);
        let mut changes: Vec<(String, u64)> = remote
            .iter()
            .filter(|&(id, n)| applied.get(id) != Some(n))
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        changes.extend(
            applied
                .keys()
                .filter(|id| !remote.contains_key(*id))
                .map(|id| (id.clone(), 0)),
        );
        let found = hub.set_remote_pending_of(&changes);
        let mut remote = remote;
        // A count for an instance not synced here yet is offered again next round.
        for ((id, _), found) in changes.iter().zip(found) {
            if !found {
                remote.remove(id);
            }
        }
        *applied = remote;
        Ok(())
    }
}
