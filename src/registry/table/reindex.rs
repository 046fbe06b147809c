//! Each entry's place in the indexes, totals, version and ring; not entry fields or rank math.

use super::ServiceTable;
use super::index::HoleSums;
use crate::registry::model::Millis;
use crate::registry::rank::RankKey;

impl ServiceTable {
    /// Re-judges every instance at `now` (liveness time was frozen: those that expired
    /// since go back into the answers).
    pub fn reindex_all(&mut self, now: Millis) {
        for slot in 0..self.slots.len() {
            self.reindex(slot as u32, now);
        }
    }

    /// Puts the entry in or out of the index according to its current state; nothing
    /// to do when its key and counts did not move (a heartbeat with the same count).
    pub(super) fn reindex(&mut self, slot: u32, now: Millis) {
        let want = self.wanted_key(slot, now);
        let unchanged = self.entry(slot).is_some_and(|entry| {
            entry.indexed == want
                && (want.is_none()
                    || entry.counted
                        == (
                            entry.instance.assumed_connections(),
                            entry.instance.spec.weight,
                        ))
        });
        if !unchanged {
            self.set_indexed(slot, want);
        }
    }

    /// The key the entry should sit under in the index now, if any.
    pub(super) fn wanted_key(&self, slot: u32, now: Millis) -> Option<RankKey> {
        self.entry(slot).and_then(|entry| {
            let eligible =
                !entry.instance.draining && (entry.instance.is_live(now) || entry.preserved);
            eligible.then(|| {
                RankKey::new(
                    entry.instance.over_cap(),
                    entry.instance.load(),
                    entry.tiebreak,
                    slot,
                )
            })
        })
    }

    pub(super) fn set_indexed(&mut self, slot: u32, want: Option<RankKey>) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let was = entry.indexed;
        self.groups.rekey(&entry.instance, was, want);
        if let Some(old) = was {
            self.index.remove(&old);
            let (assumed, weight) = entry.counted;
            self.totals.assumed_connections -= assumed;
            self.totals.weight -= u64::from(weight);
            self.totals.count -= 1;
        }
        entry.indexed = want;
        if let Some(key) = want {
            let counted = (
                entry.instance.assumed_connections(),
                entry.instance.spec.weight,
            );
            // What `/servers` can fill: a shed device never lands on a forward-only
            // instance, nor on one at its cap.
            let hole = if key.over_cap || entry.instance.forward_only {
                HoleSums::default()
            } else {
                HoleSums {
                    weight: u64::from(counted.1.max(1)),
                    assumed: counted.0,
                }
            };
            self.index.insert(key, hole);
            entry.counted = counted;
            self.totals.assumed_connections += counted.0;
            self.totals.weight += u64::from(counted.1);
            self.totals.count += 1;
        }
        if was.is_some() != want.is_some() {
            self.version ^= entry_version_bits(entry.id_hash);
            self.ring = None;
        }
    }

    /// Takes an indexed entry out of its zone's and tags' indexes, before they change.
    pub(super) fn leave_groups(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get(slot as usize).and_then(Option::as_ref) {
            self.groups.rekey(&entry.instance, entry.indexed, None);
        }
    }

    /// Puts an indexed entry into its zone's and tags' indexes, after they changed.
    pub(super) fn join_groups(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get(slot as usize).and_then(Option::as_ref) {
            self.groups.rekey(&entry.instance, None, entry.indexed);
        }
    }
}

/// An instance's share of the version: its id hash, masked to 53 bits.
fn entry_version_bits(id_hash: u64) -> u64 {
    id_hash & ((1 << 53) - 1)
}
