//! What a cluster node's sync changes in one service: rows applied as another node
//! stored them, the ids a full read checks for, and the pending hand-outs exchanged
//! between nodes.

use std::collections::HashMap;

use super::ServiceTable;
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
        let local = &mut entry.instance;
        if local.spec.address != synced.spec.address {
            self.upsert(synced, now);
            return;
        }
        local.spec = synced.spec;
        local.lease_hash = synced.lease_hash;
        local.draining = synced.draining;
        local.evacuate_per_sec = synced.evacuate_per_sec;
        local.registered_at_unix_ms = synced.registered_at_unix_ms;
        if synced.last_seen > local.last_seen {
            local.absorb_heartbeat(Some(synced.connections), synced.last_seen);
        }
        self.reindex(slot, now);
    }

    /// Ids of registered instances (not static ones).
    pub fn registered_ids(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| e.instance.origin == Origin::Registered)
            .map(|e| e.instance.id.as_str())
    }

    /// This node's pending hand-outs per instance, where there are any.
    pub fn local_pending(&self) -> Vec<(String, u64)> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| e.instance.local_pending() > 0)
            .map(|e| (e.instance.id.clone(), e.instance.local_pending()))
            .collect()
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
}
