//! The reference ordering the tests compare the selection with: a handful of
//! candidates sorted by the rule of SPEC section 2, without an index. Tests only.

use super::{RankKey, load, over_cap};

/// One instance as seen by [`rank`].
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Caller's handle for the instance.
    pub slot: u32,
    /// `connections + pending`.
    pub assumed_connections: u64,
    /// Weight, 1..=1000.
    pub weight: u32,
    /// Cap, if any.
    pub max_connections: Option<u64>,
    /// Hash of the id.
    pub tiebreak: u64,
    /// Whether it is in the requested zone (true when no zone was asked for).
    pub in_zone: bool,
}

impl Candidate {
    /// The candidate's sort key.
    pub fn key(&self) -> RankKey {
        RankKey::new(
            over_cap(self.assumed_connections, self.max_connections),
            load(self.assumed_connections, self.weight),
            self.tiebreak,
            self.slot,
        )
    }
}

/// Orders candidates best first: not over cap, then in zone, then by load.
pub fn rank(candidates: &[Candidate]) -> Vec<u32> {
    let mut keyed: Vec<((bool, bool), RankKey)> = candidates
        .iter()
        .map(|c| {
            let key = c.key();
            ((key.over_cap, !c.in_zone), key)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, key)| key.slot).collect()
}
