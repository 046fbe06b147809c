//! One answer's walk of the indexes and its hand-out count; not the order's rules (`rank/`).

use super::ServiceTable;
use super::index::RankIndex;
use crate::registry::model::{Instance, Millis};
use crate::registry::rank::{RankKey, select};
use crate::registry::ring::Ring;

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

/// Slots of one answer, and expired slots met while ordering.
struct Order {
    slots: Vec<u32>,
    stale: Vec<u32>,
}

impl ServiceTable {
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
}

/// The keys of an index, best first, with a look at the next; none for no index.
/// The keys of an index, best first; none when there is no index.
fn walk(index: Option<&RankIndex>) -> impl Iterator<Item = RankKey> + '_ {
    index.into_iter().flat_map(RankIndex::iter)
}
