//! The sweep of one service: expiry, removal after 3 × TTL, and the self-preservation
//! episode (when most instances stop heartbeating at once, the last known set stays
//! handed out until heartbeats return or the episode times out). Pure: `now` is an
//! argument.

use super::{Entry, ServiceTable};
use crate::registry::liveness::{self, Preservation};
use crate::registry::model::{Millis, Origin};

/// Self-preservation changes reported by a sweep, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreservationEvent {
    /// The service entered self-preservation with this many instances expiring.
    Started {
        /// Instances expired within the last TTL window.
        expiring: usize,
        /// Instances live or expired within the last TTL window.
        population: usize,
    },
    /// The service left self-preservation.
    Ended,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Ids removed after 3 × TTL without heartbeat.
    pub removed: Vec<String>,
    /// A self-preservation change, if any.
    pub preservation: Option<PreservationEvent>,
}

impl ServiceTable {
    /// How many registered instances sweeps found expired since the last call.
    pub fn take_expiries(&mut self) -> u64 {
        std::mem::take(&mut self.expiries)
    }

    /// Sweeps expiry, removal and self-preservation at `now`. With `may_remove` false
    /// (a cluster node that does not lead) expired instances stay until the store's
    /// removal reaches this node.
    ///
    /// While every instance was live at the last full sweep and none can have expired
    /// since (`now` not past `sweep_quiet_until`), and no self-preservation episode
    /// runs, there is nothing to judge and the sweep returns at once: a full sweep
    /// visits every instance, under the service's lock, four times a second, which
    /// at 100k instances was a visible share of a heartbeat's CPU and of `/servers`'
    /// p99 (a lock held for milliseconds).
    pub fn sweep(&mut self, now: Millis, may_remove: bool) -> SweepOutcome {
        if self.preservation.is_none() && now <= self.sweep_quiet_until {
            return SweepOutcome::default();
        }
        let mut outcome = SweepOutcome::default();
        let mut population = 0;
        let mut expiring = 0;
        // Static instances are judged by their health checks, not by heartbeats.
        let registered = |e: &&Entry| e.instance.origin == Origin::Registered;
        for entry in self.slots.iter().flatten().filter(registered) {
            let (age, ttl) = (entry.instance.age(now), entry.instance.spec.ttl_ms());
            if liveness::is_live(age, ttl) {
                population += 1;
            } else if liveness::expired_recently(age, ttl) {
                population += 1;
                expiring += 1;
            }
        }
        match &self.preservation {
            Some(p) => {
                let (mut present, mut still_expired) = (0, 0);
                for id in &p.frozen {
                    if let Some(instance) = self.get(id) {
                        present += 1;
                        still_expired += usize::from(!instance.is_live(now));
                    }
                }
                if p.should_end(now, still_expired, present) {
                    self.preservation = None;
                    for entry in self.slots.iter_mut().flatten() {
                        entry.preserved = false;
                    }
                    outcome.preservation = Some(PreservationEvent::Ended);
                }
            }
            None if liveness::looks_like_partition(expiring, population) => {
                let mut frozen = Vec::new();
                let mut frozen_slots = Vec::new();
                let mut max_ttl = 0;
                for (slot, entry) in self.slots.iter_mut().enumerate() {
                    let Some(entry) = entry else { continue };
                    if entry.instance.origin == Origin::Static {
                        continue;
                    }
                    let (age, ttl) = (entry.instance.age(now), entry.instance.spec.ttl_ms());
                    if liveness::is_live(age, ttl) || liveness::expired_recently(age, ttl) {
                        entry.preserved = true;
                        frozen.push(entry.instance.id.clone());
                        frozen_slots.push(slot as u32);
                        max_ttl = max_ttl.max(ttl);
                    }
                }
                // Instances a sweep already took out just before the episode began
                // belong to the last known set too: put them back.
                for slot in frozen_slots {
                    self.reindex(slot, now);
                }
                self.preservation = Some(Preservation {
                    since: now,
                    until: now + max_ttl * liveness::REMOVE_AFTER_TTLS,
                    frozen,
                });
                outcome.preservation = Some(PreservationEvent::Started {
                    expiring,
                    population,
                });
            }
            None => {}
        }
        // Self-preservation suspends removal, but an instance outside the frozen set
        // that expires still leaves the answers, and the version (which wakes blocking
        // queries) must say so now, not at the next `/servers` call.
        let preserving = self.preservation.is_some();
        let mut to_remove = Vec::new();
        let mut to_reindex = Vec::new();
        // The earliest expiry of the instances live now; `None` once one is not.
        let mut quiet_until = Some(Millis::MAX);
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(entry) = entry else { continue };
            let live = entry.instance.is_live(now);
            quiet_until = match (live, quiet_until) {
                (true, Some(q)) => {
                    Some(q.min(entry.instance.last_seen + entry.instance.spec.ttl_ms()))
                }
                // A static instance that is down waits for its health check, not the sweep.
                (false, q)
                    if entry.instance.origin == Origin::Static && entry.indexed.is_none() =>
                {
                    q
                }
                _ => None,
            };
            if entry.instance.origin == Origin::Registered && entry.live_at_sweep && !live {
                self.expiries += 1;
            }
            entry.live_at_sweep = live;
            let (age, ttl) = (entry.instance.age(now), entry.instance.spec.ttl_ms());
            let removable = entry.instance.origin == Origin::Registered
                && may_remove
                && !preserving
                && liveness::is_removable(age, ttl);
            if removable {
                to_remove.push(entry.instance.id.clone());
            } else if entry.indexed.is_some() && !entry.preserved && !entry.instance.is_live(now) {
                to_reindex.push(slot as u32);
            }
        }
        for slot in to_reindex {
            self.reindex(slot, now);
        }
        for id in &to_remove {
            self.remove(id);
        }
        self.sweep_quiet_until = match quiet_until {
            Some(q) if !preserving => q,
            _ => 0,
        };
        outcome.removed = to_remove;
        outcome
    }
}
