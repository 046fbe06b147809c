//! Heartbeats, health checks and unpersisted beats; not the store nor the shed math (`rank/`).

use super::ServiceTable;
use super::slots::LeaseError;
use crate::registry::model::{LeaseHash, Millis};
use crate::registry::rank::{self, RankKey, RebalancePolicy};

/// What a heartbeat answers, as the core decides it. Its wire twin is
/// `api::instances::HeartbeatAnswer` (the OpenAPI schema, with utoipa's derive, which
/// the registry core must not depend on); `api::write_json` writes this one's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The instance's TTL.
    pub ttl_secs: u32,
    /// Connections to close gracefully before the next heartbeat.
    pub shed: u64,
}

/// A persisted heartbeat: the newest count and time of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBeat {
    /// Instance id.
    pub id: String,
    /// Reported connections.
    pub connections: u64,
    /// Last heartbeat on the monotonic clock.
    pub last_seen: Millis,
}

/// When a heartbeat held in memory is due for the store (`take_due_beats`); each
/// mode's flush brings its own (`cluster::BEAT_RULE`, `upkeep::PERSIST_RULE`).
#[derive(Debug, Clone, Copy)]
pub struct BeatRule {
    /// How much newer than the stored beat a beat must be, by TTL in seconds.
    pub min_gap: fn(u32) -> Millis,
    /// Whether a count moved far enough from the stored one `(stored, now)` to be
    /// written at once, whatever its age: other nodes rank by the stored count.
    pub count_moved: fn(u64, u64) -> bool,
}

impl ServiceTable {
    /// Applies a heartbeat: renews liveness, absorbs pending hand-outs and answers the
    /// rebalancing hint.
    ///
    /// # Errors
    /// [`LeaseError`] when the id is unknown or the lease does not match; nothing changes.
    pub fn heartbeat(
        &mut self,
        id: &str,
        lease_hash: &LeaseHash,
        connections: Option<u64>,
        now: Millis,
        policy: &RebalancePolicy,
    ) -> Result<HeartbeatAnswer, LeaseError> {
        self.check_lease(id, lease_hash)?;
        let slot = self.by_id[id];
        let entry = self.slots[slot as usize]
            .as_mut()
            .expect("by_id points at a live slot");
        entry.instance.absorb_heartbeat(connections, now);
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
        }
        self.reindex(slot, now);
        let entry = self.entry(slot).expect("still present");
        let instance = &entry.instance;
        let shed = if instance.draining {
            rank::evacuation_shed(
                instance.connections,
                instance.evacuate_per_sec,
                instance.spec.heartbeat_secs(),
            )
        } else if policy.enabled && instance.connections > 0 {
            let balance = self.balance(now, policy);
            rank::shed(instance.connections, instance.spec.weight, &balance, policy)
        } else {
            // `shed` answers 0 without looking at the service: spare the descents.
            0
        };
        let ttl_secs = instance.spec.ttl_secs;
        self.recent_shed
            .record(now, shed, policy.reconnect_jitter_ms);
        if shed > 0 {
            self.activity.shed_hints += 1;
            self.activity.shed_connections = self.activity.shed_connections.saturating_add(shed);
        }
        Ok(HeartbeatAnswer { ttl_secs, shed })
    }

    /// What the rebalancing rule needs ([`rank::balance`]), from the index: it keeps,
    /// per subtree, the weights and assumed connections of the keys a shed device can
    /// land on (not over their cap, not forward-only: a shed device asks `/servers`,
    /// which never lands it on a `unix:` backend, so an idle one is no hole), so the
    /// lowest load and the sums under the floor are each one descent.
    pub(super) fn balance(&self, now: Millis, policy: &RebalancePolicy) -> rank::Balance {
        rank::balance(
            &self.totals,
            self.index.first_counted().map(|key| key.load()),
            policy,
            |floor| {
                let under = self.index.sums_below(&RankKey::new(false, floor, 0, 0));
                (under.weight, under.assumed)
            },
            || self.recent_shed.in_flight(now, policy.reconnect_jitter_ms),
        )
    }

    /// Takes the heartbeats not yet persisted.
    pub fn take_dirty(&mut self) -> Vec<DirtyBeat> {
        let mut beats = Vec::with_capacity(self.dirty.len());
        for slot in std::mem::take(&mut self.dirty) {
            if let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
                && entry.dirty
            {
                entry.dirty = false;
                entry.stored_seen = entry.instance.last_seen;
                entry.stored_connections = entry.instance.connections;
                beats.push(DirtyBeat {
                    id: entry.instance.id.clone(),
                    connections: entry.instance.connections,
                    last_seen: entry.instance.last_seen,
                });
            }
        }
        beats
    }

    /// Records a health check of a static instance: up renews it like a heartbeat with
    /// the forwarder's own connection count; down takes it out of every answer.
    /// Returns false when the id is unknown.
    pub fn set_health(&mut self, id: &str, up: bool, connections: u64, now: Millis) -> bool {
        let Some(&slot) = self.by_id.get(id) else {
            return false;
        };
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            entry.instance.down = !up;
            if up {
                entry.instance.absorb_heartbeat(Some(connections), now);
            }
        }
        // A static instance that was down at the last sweep is not in its floor.
        self.note_expiry(slot);
        self.reindex(slot, now);
        true
    }
}
