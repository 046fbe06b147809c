//! One service's storage (`ServiceTable`, its entries) and its reads; no rank math, no I/O.
//!
//! In-memory state of one service: its instances, the ranking index, pending
//! hand-outs, the version and the affinity ring. Entries in their slots and their
//! writes are in `slots.rs`, their keys in the indexes (totals, version, groups) in
//! `reindex.rs`, heartbeats, health checks and the heartbeats not yet persisted in
//! `heartbeat.rs`, the ranking of an answer and its hand-out count in `hand_out.rs`.
//! The per-zone and per-tag indexes are in `groups.rs`, the sweep and its
//! self-preservation episode in `sweep.rs`, the admin listing and its card cache in
//! `listing.rs`, what a cluster node's sync changes in `cluster.rs`, the history's
//! counts and samples in `activity.rs`.
//!
//! Pure and synchronous: the caller holds it under a lock, passes `now`, and does the
//! I/O (store writes, waking blocking queries) around it.

mod activity;
mod cluster;
mod groups;
mod hand_out;
mod heartbeat;
mod in_flight;
mod index;
mod listing;
mod reindex;
mod slots;
mod sweep;

use groups::Groups;
use in_flight::RecentShed;
use index::RankIndex;

pub use activity::{Activity, Figures};
pub use hand_out::{RankQuery, Ranked, RankedServer};
pub use heartbeat::{BeatRule, DirtyBeat, HeartbeatAnswer};
pub use listing::{Card, CardRow, InstanceView, ServiceSummary};
pub use slots::{LeaseError, new_instance};
pub use sweep::{PreservationEvent, SweepOutcome};

use std::collections::{HashMap, HashSet};

use super::liveness::Preservation;
use super::model::{Instance, Millis};
use super::rank::{RankKey, Totals};
use super::ring::Ring;

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

    /// Whether an indexed entry may be handed out now: live, or frozen by
    /// self-preservation.
    fn handed_out(&self, entry: &Entry, now: Millis) -> bool {
        entry.preserved || entry.instance.is_live(now)
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests;
