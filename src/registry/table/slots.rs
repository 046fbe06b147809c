//! Entries in their slots: upsert, register, drain, remove, leases; not index keys or ranking.

use subtle::ConstantTimeEq;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{Entry, ServiceTable};
use crate::registry::model::{Instance, InstanceSpec, LeaseHash, Millis, Origin};

/// Why a lease-protected operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// No instance with that id in this service.
    UnknownInstance,
    /// The lease does not match.
    BadLease,
}

impl ServiceTable {
    /// Inserts or replaces an instance (registration, restore from the store, or a
    /// change seen from another node). Returns true when the id was new here.
    pub fn upsert(&mut self, instance: Instance, now: Millis) -> bool {
        let carries_pending = instance.local_pending() > 0;
        let (slot, new) = self.place(instance, now);
        if carries_pending {
            self.pending.insert(slot);
        }
        self.note_expiry(slot);
        new
    }

    /// Lowers [`Self::sweep_quiet_until`] to the moment the instance at `slot` expires.
    pub(super) fn note_expiry(&mut self, slot: u32) {
        if let Some(entry) = self.entry(slot) {
            let expires = entry.instance.last_seen + entry.instance.spec.ttl_ms();
            self.sweep_quiet_until = self.sweep_quiet_until.min(expires);
        }
    }

    /// [`Self::upsert`]'s work: the slot the instance is in, and whether it is new.
    fn place(&mut self, instance: Instance, now: Millis) -> (u32, bool) {
        // An address belongs to one id: drop a stale holder (possible when another
        // registry node re-registered the address under the store's id).
        if let Some(&slot) = self.by_address.get(&instance.spec.address) {
            let holder = self.entry(slot).map(|e| e.instance.id.clone());
            if let Some(holder) = holder.filter(|h| *h != instance.id) {
                self.remove(&holder);
            }
        }
        if let Some(&slot) = self.by_id.get(&instance.id) {
            let old_address = self.entry(slot).map(|e| e.instance.spec.address.clone());
            if let Some(old) = old_address.filter(|a| *a != instance.spec.address) {
                self.by_address.remove(&old);
                self.by_address.insert(instance.spec.address.clone(), slot);
            }
            // Its zone and tags may change: out of the old groups, into the new.
            self.leave_groups(slot);
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                entry.instance = instance;
                entry.card = None;
            }
            self.join_groups(slot);
            // The whole instance changed (its forward-only mark too, which the key and
            // the counts do not show): put it in again even if its key is the same.
            let want = self.wanted_key(slot, now);
            self.set_indexed(slot, want);
            (slot, false)
        } else {
            let entry = Entry {
                tiebreak: xxh3_64_with_seed(instance.id.as_bytes(), self.tiebreak_seed),
                id_hash: xxh3_64(instance.id.as_bytes()),
                // Registered or synced: the store dated it as it arrives here.
                stored_seen: instance.last_seen,
                stored_connections: instance.connections,
                instance,
                indexed: None,
                counted: (0, 0),
                dirty: false,
                preserved: false,
                card: None,
                live_at_sweep: true,
            };
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.slots[slot as usize] = Some(entry);
                    slot
                }
                None => {
                    self.slots.push(Some(entry));
                    u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 instances")
                }
            };
            let entry = self.slots[slot as usize].as_ref().expect("just stored");
            self.by_id.insert(entry.instance.id.clone(), slot);
            self.by_address
                .insert(entry.instance.spec.address.clone(), slot);
            self.reindex(slot, now);
            (slot, true)
        }
    }

    /// Registers `spec` under `id` with a new lease: a new instance, or a re-registration
    /// that replaces the fields and lease, clears draining and keeps the counts.
    /// Returns true when the id was new here.
    pub fn register(
        &mut self,
        id: String,
        spec: InstanceSpec,
        lease_hash: LeaseHash,
        now: Millis,
        registered_at_unix_ms: u64,
    ) -> bool {
        let mut instance = new_instance(id, spec, lease_hash, now, registered_at_unix_ms);
        if let Some(old) = self.get(&instance.id) {
            instance.connections = old.connections;
            instance.pending_recent = old.pending_recent;
            instance.pending_older = old.pending_older;
            instance.registered_at_unix_ms = old.registered_at_unix_ms;
        }
        self.upsert(instance, now)
    }

    /// Checks a lease against an instance, in constant time.
    ///
    /// # Errors
    /// [`LeaseError`] when the id is unknown or the lease does not match.
    pub fn check_lease(&self, id: &str, lease_hash: &LeaseHash) -> Result<(), LeaseError> {
        let instance = self.get(id).ok_or(LeaseError::UnknownInstance)?;
        if bool::from(instance.lease_hash.ct_eq(lease_hash)) {
            Ok(())
        } else {
            Err(LeaseError::BadLease)
        }
    }

    /// Marks an instance draining: never handed out again.
    /// Returns false when the id is unknown.
    pub fn drain(&mut self, id: &str, evacuate_per_sec: Option<u32>, now: Millis) -> bool {
        let Some(&slot) = self.by_id.get(id) else {
            return false;
        };
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            entry.instance.draining = true;
            entry.instance.evacuate_per_sec = evacuate_per_sec;
        }
        self.reindex(slot, now);
        true
    }

    /// Removes an instance. Returns false when the id is unknown.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        self.set_indexed(slot, None);
        if let Some(entry) = self.slots[slot as usize].take() {
            self.by_address.remove(&entry.instance.spec.address);
        }
        self.free.push(slot);
        true
    }
}

/// Builds an instance for insertion (registration or restore).
pub fn new_instance(
    id: String,
    spec: InstanceSpec,
    lease_hash: LeaseHash,
    now: Millis,
    registered_at_unix_ms: u64,
) -> Instance {
    Instance {
        id,
        spec,
        lease_hash,
        draining: false,
        evacuate_per_sec: None,
        connections: 0,
        pending_recent: 0,
        pending_older: 0,
        remote_pending: 0,
        last_seen: now,
        registered_at_unix_ms,
        origin: Origin::Registered,
        down: false,
        forward_only: false,
    }
}
