//! The rank indexes of a service's zones and tags: for each zone and each tag, the
//! keys of its instances that sit in the main index, under the same [`RankKey`].
//! Owns only those indexes; which instances are indexed, and under which key, is the
//! table's business (it moves a key here exactly when it moves it in the main index).
//!
//! `/servers?zone=` and `?tag=` walk these instead of filtering the main index, so a
//! rare zone or tag (or one nobody has) costs what a common one does: O(log N +
//! limit), not a walk of every instance (issue 21).
//!
//! Memory: one index node (64 bytes) per instance for its zone and one per distinct
//! tag, beside its node in the main index; an instance in a zone with two tags costs
//! 192 bytes more than before. Validation bounds tags to 32 per instance. A zone or tag
//! nobody has any more is dropped with its index.

use std::collections::HashMap;

use super::index::{HoleSums, RankIndex};
use crate::registry::model::Instance;
use crate::registry::rank::RankKey;

/// The per-zone and per-tag indexes of one service.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    zones: HashMap<String, RankIndex>,
    tags: HashMap<String, RankIndex>,
    /// Steps taken by indexes since dropped, so the step count only grows.
    retired_steps: u64,
}

impl Groups {
    /// The index of a zone's instances; `None` when no indexed instance is in it.
    pub fn zone(&self, zone: &str) -> Option<&RankIndex> {
        self.zones.get(zone)
    }

    /// The index of a tag's instances; `None` when no indexed instance carries it.
    pub fn tag(&self, tag: &str) -> Option<&RankIndex> {
        self.tags.get(tag)
    }

    /// The zones and tags that have an index.
    #[cfg(test)]
    pub fn names(&self) -> (Vec<&str>, Vec<&str>) {
        (
            self.zones.keys().map(String::as_str).collect(),
            self.tags.keys().map(String::as_str).collect(),
        )
    }

    /// Nodes visited in every group index so far.
    pub fn steps(&self) -> u64 {
        self.retired_steps
            + self
                .zones
                .values()
                .chain(self.tags.values())
                .map(RankIndex::steps)
                .sum::<u64>()
    }

    /// Moves `instance` from `old` to `new` in the indexes of its zone and tags (either
    /// may be `None`: not indexed before, or not after). The caller passes the same
    /// keys it moves in the main index, with the instance's groups as they were when
    /// `old` went in (a change of zone or tags is a move out, then in).
    pub fn rekey(&mut self, instance: &Instance, old: Option<RankKey>, new: Option<RankKey>) {
        if old == new {
            return;
        }
        if let Some(zone) = instance.spec.zone.as_deref() {
            rekey_in(&mut self.zones, &mut self.retired_steps, zone, old, new);
        }
        let tags = &instance.spec.tags;
        for (i, tag) in tags.iter().enumerate() {
            // A tag given twice is one membership: its key goes in once.
            if !tags[..i].contains(tag) {
                rekey_in(&mut self.tags, &mut self.retired_steps, tag, old, new);
            }
        }
    }
}

fn rekey_in(
    groups: &mut HashMap<String, RankIndex>,
    retired_steps: &mut u64,
    name: &str,
    old: Option<RankKey>,
    new: Option<RankKey>,
) {
    // Looked up by `&str` first: a heartbeat moving a key allocates nothing.
    let index = match groups.get_mut(name) {
        Some(index) => index,
        None if new.is_some() => groups.entry(name.to_owned()).or_default(),
        None => return,
    };
    if let Some(old) = old {
        index.remove(&old);
    }
    if let Some(new) = new {
        // The group indexes answer no hole search: no sums.
        index.insert(new, HoleSums::default());
    } else if index.is_empty() {
        *retired_steps += index.steps();
        groups.remove(name);
    }
}
