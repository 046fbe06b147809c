//! In-memory state of one service: its instances, the ranking index, pending
//! hand-outs, the version and the affinity ring. The per-zone and per-tag indexes are
//! in `groups.rs`, the sweep and its self-preservation episode in `sweep.rs`, the admin listing and its card cache in `listing.rs`,
//! what a cluster node's sync changes in `cluster.rs`, the history's counts and samples in
//! `activity.rs`.
//!
//! Pure and synchronous: the caller holds it under a lock, passes `now`, and does the
//! I/O (store writes, waking blocking queries) around it.

mod activity;
mod cluster;
mod groups;
mod in_flight;
mod index;
mod listing;
mod sweep;

use groups::Groups;
use in_flight::RecentShed;
use index::{HoleSums, RankIndex};

pub use activity::{Activity, Figures};
pub use listing::{Card, CardRow, InstanceView, ServiceSummary};
pub use sweep::{PreservationEvent, SweepOutcome};

use std::collections::{HashMap, HashSet};

use subtle::ConstantTimeEq;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::liveness::Preservation;
use super::model::{Instance, InstanceSpec, LeaseHash, Millis, Origin};
use super::rank::{self, RankKey, RebalancePolicy, Totals, select};
use super::ring::Ring;

/// Why a lease-protected operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// No instance with that id in this service.
    UnknownInstance,
    /// The lease does not match.
    BadLease,
}

/// What a `/servers` caller asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RankQuery<'a> {
    /// How many servers to return (1..=100).
    pub limit: usize,
    /// Preferred zone.
    pub zone: Option<&'a str>,
    /// Affinity key.
    pub key: Option<&'a [u8]>,
    /// Only instances whose tags contain this one (e.g. a canary `v2`).
    pub tag: Option<&'a str>,
}

/// One server in a ranked answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedServer {
    /// Instance id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// Zone label, if any.
    pub zone: Option<String>,
    /// Weight.
    pub weight: u32,
    /// Reported connections.
    pub connections: u64,
    /// Load when ranked (before this answer's own hand-out).
    pub load: f64,
}

/// A ranked answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The service version the answer reflects.
    pub version: u64,
    /// Best first.
    pub servers: Vec<RankedServer>,
    /// Whether the service is in self-preservation.
    pub self_preservation: bool,
}

impl Ranked {
    /// The `/servers` answer of `table`: its ranking ([`ServiceTable::rank`]) without
    /// the instances only the forwarder can reach (`unix:` sockets), each server
    /// copied; the first counts a hand-out.
    pub fn of(table: &mut ServiceTable, query: &RankQuery<'_>, now: Millis) -> Ranked {
        Ranked::excluding(table, query, now, &|i| i.forward_only)
    }

    /// The ranking of `table` without the instances `exclude` names, each server copied.
    pub fn excluding(
        table: &mut ServiceTable,
        query: &RankQuery<'_>,
        now: Millis,
        exclude: &dyn Fn(&Instance) -> bool,
    ) -> Ranked {
        let mut servers = Vec::new();
        let version = table.rank(query, now, exclude, &mut |instance| {
            servers.push(RankedServer {
                id: instance.id.clone(),
                address: instance.spec.address.clone(),
                zone: instance.spec.zone.clone(),
                weight: instance.spec.weight,
                connections: instance.connections,
                load: instance.load(),
            });
        });
        Ranked {
            version,
            servers,
            self_preservation: table.self_preservation(),
        }
    }
}

/// What a heartbeat answers.
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

/// Slots of one answer, and expired slots met while ordering.
struct Order {
    slots: Vec<u32>,
    stale: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Entry {
    instance: Instance,
    /// Orders equal loads; seeded per registry node so that nodes answering a burst
    /// at once start on different instances.
    tiebreak: u64,
    /// Hash of the id alone: the instance's share of the version, equal on every node.
    id_hash: u64,
    /// The key under which it sits in the index, when it can be handed out.
    indexed: Option<RankKey>,
    /// Its `(assumed connections, weight)` as counted in the totals while indexed.
    counted: (u64, u32),
    /// Heartbeat not yet persisted.
    dirty: bool,
    /// The newest heartbeat the store is known to hold (written from here or synced
    /// from another node): a cluster node writes the next one only when liveness
    /// across nodes needs it (`take_due_beats`).
    stored_seen: Millis,
    /// The connection count of that stored heartbeat.
    stored_connections: u64,
    /// Part of the set frozen by self-preservation: handed out even if expired.
    preserved: bool,
    /// The caller's rendering of the instance's fixed fields (the admin listing's
    /// JSON), kept until they change.
    card: Option<Card>,
    /// Live at the last sweep: a sweep that finds it expired counts one expiry.
    live_at_sweep: bool,
}

/// One service's instances and everything derived from them.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    name: String,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    by_address: HashMap<String, u32>,
    index: RankIndex,
    /// The keys of `index` again, per zone and per tag.
    groups: Groups,
    totals: Totals,
    version: u64,
    ring: Option<Ring>,
    preservation: Option<Preservation>,
    dirty: Vec<u32>,
    /// Slots that may hold this node's pending hand-outs (every slot a hand-out was
    /// counted on, until its count is seen back at zero): what a cluster node
    /// publishes, found without walking the whole table.
    pending: HashSet<u32>,
    tiebreak_seed: u64,
    /// Registered instances sweeps found expired, not yet taken (for metrics).
    expiries: u64,
    /// Until when a sweep has nothing to do (`sweep.rs`): the earliest moment an
    /// instance that was live at the last full sweep can expire, lowered whenever an
    /// instance is placed or its TTL changes (a heartbeat only moves expiry later).
    /// 0 when the last sweep found an instance expired, or during self-preservation.
    sweep_quiet_until: Millis,
    /// `shed` answered lately, for the devices still expected to reconnect.
    recent_shed: RecentShed,
    /// Hand-outs and shed hints since the history last sampled (`activity.rs`).
    activity: Activity,
}

impl ServiceTable {
    /// An empty service (version 0).
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_tiebreak_seed(name, 0)
    }

    /// An empty service whose ties between equal loads are broken by a hash seeded
    /// with `seed` (each cluster node picks its own).
    pub fn with_tiebreak_seed(name: impl Into<String>, seed: u64) -> Self {
        ServiceTable {
            name: name.into(),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_address: HashMap::new(),
            index: RankIndex::default(),
            groups: Groups::default(),
            totals: Totals::default(),
            version: 0,
            ring: None,
            preservation: None,
            dirty: Vec::new(),
            pending: HashSet::new(),
            tiebreak_seed: seed,
            expiries: 0,
            sweep_quiet_until: 0,
            recent_shed: RecentShed::default(),
            activity: Activity::default(),
        }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current version: changes whenever the set of instances handed out changes.
    ///
    /// It is the XOR of a hash of each such instance's id, masked to 53 bits (exact in
    /// JSON numbers everywhere): a function of the set alone, so every registry node
    /// holding the same set answers the same version, across restarts too.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of instances in all states.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the service has no instances.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Steps taken in the ranking index so far (nodes visited): the cost measure that
    /// shows whether a request's work grows with the number of instances.
    pub fn index_steps(&self) -> u64 {
        self.index.steps() + self.groups.steps()
    }

    /// Whether self-preservation is on.
    pub fn self_preservation(&self) -> bool {
        self.preservation.is_some()
    }

    /// Totals over the instances that can be handed out.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The id registered for an address, if any.
    pub fn id_of_address(&self, address: &str) -> Option<&str> {
        let slot = *self.by_address.get(address)?;
        self.entry(slot).map(|e| e.instance.id.as_str())
    }

    /// An instance by id.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        let slot = *self.by_id.get(id)?;
        self.entry(slot).map(|e| &e.instance)
    }

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
    fn note_expiry(&mut self, slot: u32) {
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

    /// Re-judges every instance at `now` (liveness time was frozen: those that expired
    /// since go back into the answers).
    pub fn reindex_all(&mut self, now: Millis) {
        for slot in 0..self.slots.len() {
            self.reindex(slot as u32, now);
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
    fn balance(&self, now: Millis, policy: &RebalancePolicy) -> rank::Balance {
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

    /// Ranks the service for one answer (`/servers`, the forwarder, DNS): hands the
    /// instances of the answer to `each`, best first, before the first counts its
    /// hand-out; those `exclude` rejects, and those without the query's tag, take no
    /// part. Nothing is copied (DNS writes the addresses straight into its answer).
    /// Returns the version. The order is [`select::Selection`]'s.
    pub fn rank(
        &mut self,
        query: &RankQuery<'_>,
        now: Millis,
        exclude: &dyn Fn(&Instance) -> bool,
        each: &mut dyn FnMut(&Instance),
    ) -> u64 {
        let tag = query.tag;
        let exclude =
            &|i: &Instance| exclude(i) || tag.is_some_and(|t| !i.spec.tags.iter().any(|x| x == t));
        if query.key.is_some() && self.ring.is_none() {
            let members = self
                .index
                .iter()
                .filter_map(|k| self.entry(k.slot).map(|e| (k.slot, e.instance.id.as_str())));
            self.ring = Some(Ring::build(members));
        }
        let mut order = self.order(query, now, exclude);
        // An instance that expired since the last sweep was skipped: take it out of the
        // index now, so the answer's version already reflects the smaller set.
        if !order.stale.is_empty() {
            for slot in std::mem::take(&mut order.stale) {
                self.reindex(slot, now);
            }
            order = self.order(query, now, exclude);
        }
        for entry in order.slots.iter().filter_map(|&slot| self.entry(slot)) {
            each(&entry.instance);
        }
        if let Some(&slot) = order.slots.first() {
            self.count_hand_out(slot, now);
        }
        self.version
    }

    /// The answer's slots, best first, and the indexed slots found expired on the way:
    /// the selection over the smallest indexes that hold each part of the answer
    /// (`outer`: the tag's index with a tag, else the main one; `inner`: the zone's,
    /// or with a tag too the smaller of the zone's and the tag's).
    fn order(
        &self,
        query: &RankQuery<'_>,
        now: Millis,
        exclude: &dyn Fn(&Instance) -> bool,
    ) -> Order {
        let seen = |slot: u32| self.seen(slot, now);
        let first = match (query.key, self.ring.as_ref()) {
            (Some(key), Some(ring)) => {
                select::keyed_pick(ring, key, query.zone, &self.totals, seen, exclude)
            }
            _ => None,
        };
        let outer = match query.tag {
            Some(tag) => self.groups.tag(tag),
            None => Some(&self.index),
        };
        let inner =
            query.zone.and_then(
                |zone| match (self.groups.zone(zone), query.tag.and(outer)) {
                    (Some(z), Some(t)) if t.len() < z.len() => Some(t),
                    (z, _) => z,
                },
            );
        let walks = select::Walks {
            outer: walk(outer),
            inner: walk(inner),
        };
        let mut order = Order {
            slots: Vec::with_capacity(query.limit.clamp(1, 100)),
            stale: Vec::new(),
        };
        for step in select::Selection::new(walks, query.zone, first, query.limit, seen, exclude) {
            match step {
                select::Step::Take(slot) => order.slots.push(slot),
                select::Step::Expired(slot) => order.stale.push(slot),
            }
        }
        order
    }

    /// What the selection sees at `slot` now.
    fn seen(&self, slot: u32, now: Millis) -> select::Seen<'_> {
        match self.entry(slot) {
            None => select::Seen::Gone,
            Some(entry) if !self.handed_out(entry, now) => select::Seen::Expired,
            Some(entry) => select::Seen::Live(&entry.instance),
        }
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

    /// Whether an indexed entry may be handed out now: live, or frozen by
    /// self-preservation.
    fn handed_out(&self, entry: &Entry, now: Millis) -> bool {
        entry.preserved || entry.instance.is_live(now)
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
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

    /// Counts one hand-out for an instance chosen outside `rank` (the forwarder's
    /// retry on the next candidate). Returns false when the id is unknown.
    pub fn count_hand_out_of(&mut self, id: &str, now: Millis) -> bool {
        match self.by_id.get(id) {
            Some(&slot) => {
                self.count_hand_out(slot, now);
                true
            }
            None => false,
        }
    }

    fn count_hand_out(&mut self, slot: u32, now: Millis) {
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            entry.instance.pending_recent = entry.instance.pending_recent.saturating_add(1);
            self.pending.insert(slot);
            self.activity.hand_outs += 1;
        }
        self.reindex(slot, now);
    }

    /// Puts the entry in or out of the index according to its current state; nothing
    /// to do when its key and counts did not move (a heartbeat with the same count).
    fn reindex(&mut self, slot: u32, now: Millis) {
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
    fn wanted_key(&self, slot: u32, now: Millis) -> Option<RankKey> {
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

    fn set_indexed(&mut self, slot: u32, want: Option<RankKey>) {
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
}

impl ServiceTable {
    /// Takes an indexed entry out of its zone's and tags' indexes, before they change.
    fn leave_groups(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get(slot as usize).and_then(Option::as_ref) {
            self.groups.rekey(&entry.instance, entry.indexed, None);
        }
    }

    /// Puts an indexed entry into its zone's and tags' indexes, after they changed.
    fn join_groups(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get(slot as usize).and_then(Option::as_ref) {
            self.groups.rekey(&entry.instance, None, entry.indexed);
        }
    }
}

/// The keys of an index, best first, with a look at the next; none for no index.
/// The keys of an index, best first; none when there is no index.
fn walk(index: Option<&RankIndex>) -> impl Iterator<Item = RankKey> + '_ {
    index.into_iter().flat_map(RankIndex::iter)
}

/// An instance's share of the version: its id hash, masked to 53 bits.
fn entry_version_bits(id_hash: u64) -> u64 {
    id_hash & ((1 << 53) - 1)
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

#[cfg(test)]
mod tests;
