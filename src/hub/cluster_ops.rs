//! The primitives a cluster node (`cluster/`) drives: memory-only changes its sync
//! decides (synced rows and beats, forgotten ids, pending hand-outs of other nodes),
//! and the two switches a shared store needs (liveness time held while the store is
//! unreachable, removal left to one node). No store call and no protocol here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Hub;
use crate::clock::Clock;
use crate::registry::{Instance, Millis};

/// Synced heartbeats applied under one hold of a table lock.
const BEATS_PER_LOCK: usize = 256;

impl Hub {
    /// The monotonic clock, not held: for what the node itself measures.
    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Liveness time as the tables see it (held or not).
    pub(crate) fn liveness_now(&self) -> Millis {
        self.now()
    }

    /// Sets whether this hub removes expired instances; true when it changed.
    pub(crate) fn set_may_remove(&self, allowed: bool) -> bool {
        self.inner.may_remove.swap(allowed, Ordering::Relaxed) != allowed
    }

    /// Holds liveness time at `at` (the last moment the shared store was known) and
    /// puts back what expired since; true when it was not held before.
    pub(crate) fn hold_time(&self, at: Millis) -> bool {
        let held = self
            .inner
            .held_at
            .compare_exchange(u64::MAX, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if held {
            for slot in self.all_slots() {
                slot.apply(|t| t.reindex_all(at));
            }
        }
        held
    }

    /// Lets liveness time run again; true when it was held.
    pub(crate) fn release_time(&self) -> bool {
        self.inner.held_at.swap(u64::MAX, Ordering::Relaxed) != u64::MAX
    }

    /// Applies an instance as another node stored it (memory only).
    pub(crate) fn apply_synced(&self, service: &str, instance: Instance) {
        let now = self.now();
        self.slot_or_create(service)
            .apply(|t| t.apply_synced(instance, now));
    }

    /// Applies heartbeats other nodes wrote (memory only), `(service, id, connections,
    /// age in ms)`: one table lock per service and [`BEATS_PER_LOCK`] beats, so a large
    /// batch never keeps a heartbeat waiting long. Returns how many changed an instance.
    pub(crate) fn apply_synced_beats(&self, beats: &[(&str, &str, u64, Millis)]) -> usize {
        let now = self.now();
        let mut changed = 0;
        for run in beats.chunk_by(|a, b| a.0 == b.0) {
            let Some(slot) = self.slot(run[0].0) else {
                continue;
            };
            for chunk in run.chunks(BEATS_PER_LOCK) {
                changed += slot.apply(|t| {
                    chunk
                        .iter()
                        .filter(|(_, id, conns, age)| {
                            t.apply_synced_beat(id, *conns, now.saturating_sub(*age), now)
                        })
                        .count()
                });
            }
        }
        changed
    }

    /// Forgets an instance that the shared store no longer has (memory only).
    pub(crate) fn forget(&self, service: &str, id: &str) {
        if let Some(slot) = self.slot(service) {
            slot.apply(|t| t.remove(id));
        }
    }

    /// The ids of every registered (not static) instance, by service.
    pub(crate) fn registered_ids(&self) -> Vec<(String, Vec<String>)> {
        self.all_slots()
            .iter()
            .map(|slot| {
                let table = slot.lock();
                let ids = table.registered_ids().map(str::to_owned).collect();
                (table.name().to_owned(), ids)
            })
            .collect()
    }

    /// This hub's own pending hand-outs, per instance id.
    pub(crate) fn local_pending(&self) -> Vec<(String, u64)> {
        let mut mine = Vec::new();
        for slot in self.all_slots() {
            mine.extend(slot.lock().local_pending());
        }
        mine
    }

    /// Sets the pending hand-outs the other nodes counted, per instance id.
    pub(crate) fn set_remote_pending(&self, remote: &HashMap<String, u64>) {
        let now = self.now();
        for slot in self.all_slots() {
            slot.apply(|t| t.set_remote_pending(remote, now));
        }
    }

    /// Sets the other nodes' pending hand-outs of the given instances only; returns,
    /// in the same order, whether some service here holds each id.
    pub(crate) fn set_remote_pending_of(&self, changes: &[(String, u64)]) -> Vec<bool> {
        let mut found = vec![false; changes.len()];
        if changes.is_empty() {
            return found;
        }
        let now = self.now();
        for slot in self.all_slots() {
            slot.apply(|t| t.set_remote_pending_of(changes, &mut found, now));
        }
        found
    }
}
