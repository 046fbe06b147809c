//! The selection of one answer, as pingora's selection is: an ordered, bounded
//! iterator of candidates over the service's rank indexes. First the keyed pick (the
//! affinity key's owner on the ring, under the bounded load), then the instances below
//! their cap, in the asked zone first, then the others; then those at their cap, in the
//! zone first; each part in index order, the whole cut at the limit.
//!
//! Pure: the table hands in its index walks (already in [`RankKey`] order) and a
//! lookup of each slot; nothing here stores or changes anything. Expired instances met
//! on the way are reported (`Step::Expired`) for the table to take out of its index.

use std::iter::Peekable;

use super::{BOUNDED_LOAD_FACTOR, RankKey, Totals, fits_bound};
use crate::registry::model::Instance;
use crate::registry::ring::{self, Ring};

/// What a slot of the index holds, as the selection sees it now.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// Nothing (removed since).
    Gone,
    /// Indexed but no longer handed out: expired since the last sweep.
    Expired,
    /// Handed out: live, or frozen by self-preservation.
    Live(&'a Instance),
}

/// One step of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next server of the answer.
    Take(u32),
    /// An indexed slot found expired on the way (not part of the answer).
    Expired(u32),
}

/// Where a selection walks: `outer` holds every instance the query may answer (the
/// tag's index with a tag, else the main one); with a zone, `inner` holds every one
/// of those in the zone (the zone's index, or with a tag too the smaller of the zone's
/// and the tag's: `exclude` then rejects what lacks the tag). Both best first; an
/// index that does not exist walks as empty.
#[derive(Debug)]
pub struct Walks<O, I> {
    /// The query's whole set.
    pub outer: O,
    /// With a zone: the zone's part of it (unused without one).
    pub inner: I,
}

/// The parts of an answer, in order: (in `inner`?, at or over the cap?).
const PARTS_WITH_ZONE: [(bool, bool); 4] =
    [(true, false), (false, false), (true, true), (false, true)];
const PARTS_WITHOUT_ZONE: [(bool, bool); 2] = [(false, false), (false, true)];

/// The candidates of one answer, best first; see the module doc. At most `limit`
/// [`Step::Take`]s.
///
/// Each part is walked in the smallest index that holds all of it, so the walk does
/// not grow with the fleet (issue 21): the in-zone parts in `inner`, the others in
/// `outer`, skipping the in-zone keys. Those skips are bounded: the walk of `outer`
/// below the cap starts only once `inner`'s keys below the cap are used up, so every
/// in-zone key it skips there is one `inner`'s walk already visited (the same at the
/// cap). A request thus visits at most twice the keys it takes, plus the keyed pick,
/// the keys `exclude` rejects, the expired ones met, and, with both a zone and a tag,
/// the other filter's misses in `inner`; each walk starts with an O(log N) descent.
#[allow(missing_debug_implementations)] // holds closures
pub struct Selection<'a, O: Iterator<Item = RankKey>, I: Iterator<Item = RankKey>, L> {
    outer: Peekable<O>,
    inner: Peekable<I>,
    zone: Option<&'a str>,
    first: Option<u32>,
    /// The keyed pick is yet to be taken.
    first_pending: bool,
    parts: &'static [(bool, bool)],
    part: usize,
    left: usize,
    lookup: L,
    exclude: &'a dyn Fn(&Instance) -> bool,
}

impl<'a, O, I, L> Selection<'a, O, I, L>
where
    O: Iterator<Item = RankKey>,
    I: Iterator<Item = RankKey>,
    L: Fn(u32) -> Seen<'a>,
{
    /// The selection of `limit` (at least 1) servers over `walks`, `first` (the keyed
    /// pick, see [`keyed_pick`]) first; `zone` is the asked zone (`walks.inner` its
    /// walk); `exclude` the caller's filter (with the asked tag's).
    pub fn new(
        walks: Walks<O, I>,
        zone: Option<&'a str>,
        first: Option<u32>,
        limit: usize,
        lookup: L,
        exclude: &'a dyn Fn(&Instance) -> bool,
    ) -> Self {
        Selection {
            outer: walks.outer.peekable(),
            inner: walks.inner.peekable(),
            zone,
            first,
            first_pending: first.is_some(),
            parts: if zone.is_some() {
                &PARTS_WITH_ZONE
            } else {
                &PARTS_WITHOUT_ZONE
            },
            part: 0,
            left: limit.max(1),
            lookup,
            exclude,
        }
    }

    /// The next key of the current part, if that part has one left.
    fn next_key(&mut self) -> Option<RankKey> {
        let (in_inner, over_cap) = *self.parts.get(self.part)?;
        let same_side = |k: &RankKey| k.over_cap == over_cap;
        if in_inner {
            self.inner.next_if(same_side)
        } else {
            self.outer.next_if(same_side)
        }
    }
}

impl<'a, O, I, L> Iterator for Selection<'a, O, I, L>
where
    O: Iterator<Item = RankKey>,
    I: Iterator<Item = RankKey>,
    L: Fn(u32) -> Seen<'a>,
{
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if self.left == 0 {
            return None;
        }
        if self.first_pending {
            self.first_pending = false;
            self.left -= 1;
            return self.first.map(Step::Take);
        }
        while self.part < self.parts.len() {
            let Some(key) = self.next_key() else {
                self.part += 1;
                continue;
            };
            if Some(key.slot) == self.first {
                continue;
            }
            let instance = match (self.lookup)(key.slot) {
                Seen::Gone => continue,
                Seen::Expired => return Some(Step::Expired(key.slot)),
                Seen::Live(instance) => instance,
            };
            let (in_inner, _) = self.parts[self.part];
            // `inner` may be the tag's index (smaller than the zone's): its keys
            // outside the zone are skipped; `outer` skips what `inner` had.
            if self
                .zone
                .is_some_and(|zone| in_zone(zone, instance) != in_inner)
            {
                continue;
            }
            if (self.exclude)(instance) {
                continue;
            }
            self.left -= 1;
            return Some(Step::Take(key.slot));
        }
        None
    }
}

/// The affinity key's server: its owner on `ring` unless that is at its cap or over
/// the bounded load (`BOUNDED_LOAD_FACTOR` of its share of `totals`), then the next
/// owner on the ring that is not; in the zone first when one is asked. `None` when no
/// member fits (every one excluded, expired or full).
pub fn keyed_pick<'a>(
    ring: &Ring,
    key: &[u8],
    zone: Option<&str>,
    totals: &Totals,
    lookup: impl Fn(u32) -> Seen<'a>,
    exclude: &dyn Fn(&Instance) -> bool,
) -> Option<u32> {
    let hash = ring::key_hash(key);
    let fits = |slot: u32, want_zone: bool| match lookup(slot) {
        Seen::Live(i) => {
            !exclude(i)
                && !i.over_cap()
                && (!want_zone || zone.is_none_or(|z| in_zone(z, i)))
                && fits_bound(
                    i.assumed_connections(),
                    i.spec.weight,
                    totals,
                    BOUNDED_LOAD_FACTOR,
                )
        }
        Seen::Gone | Seen::Expired => false,
    };
    let in_zone = zone
        .is_some()
        .then(|| ring.pick(hash, |slot| fits(slot, true)))
        .flatten();
    in_zone.or_else(|| ring.pick(hash, |slot| fits(slot, false)))
}

fn in_zone(zone: &str, instance: &Instance) -> bool {
    instance.spec.zone.as_deref() == Some(zone)
}
