//! What a cluster node's sync changes in one service: rows applied as another node
//! stored them, heartbeats synced from other nodes, which of this node's heartbeats
//! are due for the store, the ids a full read checks for, and the pending hand-outs
//! exchanged between nodes. Pure: times are arguments.

use std::collections::HashMap;

use super::{BeatRule, DirtyBeat, ServiceTable};
use crate::registry::model::{Instance, Millis, Origin};

impl ServiceTable {
    /// Applies a row synced from the cluster's store: a new instance, changed fields,
    /// or a newer heartbeat (by `last_seen`, derived from the database clock). A newer
    /// count absorbs this node's pending hand-outs like a local heartbeat.
    pub fn apply_synced(&mut self, synced: Instance, now: Millis) {
        let Some(&slot) = self.by_id.get(&synced.id) else {
            self.upsert(synced, now);
            return;
        };
        let Some(entry) = self.slots[slot as usize].as_mut() else {
            return;
        };
        if entry.instance.spec != synced.spec
            || entry.instance.registered_at_unix_ms != synced.registered_at_unix_ms
        {
            entry.card = None;
        }
        if entry.instance.spec.address != synced.spec.address {
            self.upsert(synced, now);
            return;
        }
        // A new zone or new tags move it between group indexes: out under the old.
        let regroup = entry.instance.spec.zone != synced.spec.zone
            || entry.instance.spec.tags != synced.spec.tags;
        if regroup {
            self.groups.rekey(&entry.instance, entry.indexed, None);
        }
        let local = &mut entry.instance;
        local.spec = synced.spec;
        local.lease_hash = synced.lease_hash;
        local.draining = synced.draining;
        local.evacuate_per_sec = synced.evacuate_per_sec;
        local.registered_at_unix_ms = synced.registered_at_unix_ms;
        if synced.last_seen > local.last_seen {
            local.absorb_heartbeat(Some(synced.connections), synced.last_seen);
        }
        if synced.last_seen >= entry.stored_seen {
            entry.stored_seen = synced.last_seen;
            entry.stored_connections = synced.connections;
        }
        if regroup {
            self.groups.rekey(&entry.instance, None, entry.indexed);
        }
        // Another node may have stored a shorter TTL.
        self.note_expiry(slot);
        self.reindex(slot, now);
    }

    /// Applies a heartbeat another node wrote (`last_seen` derived from the database
    /// clock): newer than this node's, it renews liveness and absorbs pending
    /// hand-outs like a local heartbeat, and an unwritten local one is superseded.
    /// Unknown ids are left to the row sync. True when the instance changed.
    pub fn apply_synced_beat(
        &mut self,
        id: &str,
        connections: u64,
        last_seen: Millis,
        now: Millis,
    ) -> bool {
        let Some(&slot) = self.by_id.get(id) else {
            return false;
        };
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        if last_seen >= entry.stored_seen {
            entry.stored_seen = last_seen;
            entry.stored_connections = connections;
        }
        if last_seen <= entry.instance.last_seen {
            return false;
        }
        entry
            .instance
            .absorb_heartbeat(Some(connections), last_seen);
        // The store already holds a newer beat than the one waiting here.
        entry.dirty = false;
        self.reindex(slot, now);
        true
    }

    /// Takes the heartbeats due to be written now (both modes' flush, by `rule`), and
    /// leaves the others dirty for a later round. A beat is due when it is at least
    /// `min_gap(ttl_secs)` newer than the newest one the store is known to hold for
    /// the instance (so other nodes' view of it never falls further behind), when it
    /// has waited that long with no newer one (the instance went quiet: its last beat
    /// is not lost), or when its count moved from the stored one (`count_moved`).
    pub fn take_due_beats(&mut self, now: Millis, rule: &BeatRule) -> Vec<DirtyBeat> {
        let mut beats = Vec::new();
        let mut waiting = Vec::new();
        for slot in std::mem::take(&mut self.dirty) {
            let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if !entry.dirty {
                continue;
            }
            let gap = (rule.min_gap)(entry.instance.spec.ttl_secs);
            let seen = entry.instance.last_seen;
            let count = entry.instance.connections;
            if seen.saturating_sub(entry.stored_seen) >= gap
                || now.saturating_sub(seen) >= gap
                || (rule.count_moved)(entry.stored_connections, count)
            {
                entry.dirty = false;
                entry.stored_seen = seen;
                entry.stored_connections = count;
                beats.push(DirtyBeat {
                    id: entry.instance.id.clone(),
                    connections: entry.instance.connections,
                    last_seen: seen,
                });
            } else {
                waiting.push(slot);
            }
        }
        self.dirty = waiting;
        beats
    }

    /// Ids of registered instances (not static ones).
    pub fn registered_ids(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| e.instance.origin == Origin::Registered)
            .map(|e| e.instance.id.as_str())
    }

    /// This node's pending hand-outs per instance, where there are any: only the slots
    /// a hand-out was counted on are looked at (a table of 30,000 instances was walked
    /// whole four times a second), and those seen back at zero are dropped from them.
    pub fn local_pending(&mut self) -> Vec<(String, u64)> {
        let mut mine = Vec::new();
        let slots = &self.slots;
        self.pending.retain(|&slot| {
            let Some(entry) = slots.get(slot as usize).and_then(Option::as_ref) else {
                return false;
            };
            let n = entry.instance.local_pending();
            if n > 0 {
                mine.push((entry.instance.id.clone(), n));
            }
            n > 0
        });
        mine
    }

    /// Sets the other nodes' pending hand-outs of every instance (absent ids: 0).
    pub fn set_remote_pending(&mut self, remote: &HashMap<String, u64>, now: Millis) {
        let mut changed = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(entry) = entry else { continue };
            let value = remote.get(&entry.instance.id).copied().unwrap_or(0);
            if entry.instance.remote_pending != value {
                entry.instance.remote_pending = value;
                changed.push(slot as u32);
            }
        }
        for slot in changed {
            self.reindex(slot, now);
        }
    }

    /// Sets the other nodes' pending hand-outs of the instances in `changes` only, by
    /// id; marks in `found` (same order) those this table holds.
    pub fn set_remote_pending_of(
        &mut self,
        changes: &[(String, u64)],
        found: &mut [bool],
        now: Millis,
    ) {
        for ((id, value), found) in changes.iter().zip(found.iter_mut()) {
            let Some(&slot) = self.by_id.get(id) else {
                continue;
            };
            *found = true;
            let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if entry.instance.remote_pending != *value {
                entry.instance.remote_pending = *value;
                self.reindex(slot, now);
            }
        }
    }
}
