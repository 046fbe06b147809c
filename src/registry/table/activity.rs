//! What one service did between two looks, for the dashboard's history: hand-outs
//! counted (`/servers`, the forwarder, DNS) and shed hints answered, taken and reset
//! by whoever samples; and one sample's figures with every instance handed to the
//! sampler under the caller's lock.
//!
//! Counts only: must not decide a hand-out or a hint (`hand_out.rs`, `heartbeat.rs`
//! and `rank` do).

use super::ServiceTable;
use crate::registry::model::{Instance, Millis, State};

/// Counts since the last [`ServiceTable::take_activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Hand-outs counted: an instance put first in an answer, or chosen by the
    /// forwarder (on a retry too).
    pub hand_outs: u64,
    /// Heartbeat answers with `shed` > 0.
    pub shed_hints: u64,
    /// Connections those answers asked to close.
    pub shed_connections: u64,
}

/// One sample of a service: the counts of `GET /v1/services` and the activity since
/// the last sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Live, not draining.
    pub up: u64,
    /// Live, draining.
    pub draining: u64,
    /// Expired, not yet removed.
    pub expired: u64,
    /// Sum of reported connections of live instances.
    pub connections: u64,
    /// Taken with this sample (and reset).
    pub activity: Activity,
}

impl ServiceTable {
    /// The activity since the last call, reset to zero.
    pub fn take_activity(&mut self) -> Activity {
        std::mem::take(&mut self.activity)
    }

    /// One sample: hands every instance with its state to `each` (in slot order,
    /// which an instance keeps while it is registered) and answers the service's
    /// figures, its activity taken. One walk of the table.
    pub fn sample(&mut self, now: Millis, each: &mut dyn FnMut(&Instance, State)) -> Figures {
        let mut figures = Figures {
            activity: self.take_activity(),
            ..Figures::default()
        };
        for entry in self.slots.iter().flatten() {
            let instance = &entry.instance;
            let state = instance.state(now);
            match state {
                State::Up => figures.up += 1,
                State::Draining => figures.draining += 1,
                State::Expired => figures.expired += 1,
            }
            if state != State::Expired {
                figures.connections = figures.connections.saturating_add(instance.connections);
            }
            each(instance, state);
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RebalancePolicy;
    use crate::registry::model::InstanceSpec;
    use crate::registry::table::{RankQuery, Ranked, new_instance};

    fn spec(address: &str) -> InstanceSpec {
        InstanceSpec {
            address: address.to_owned(),
            weight: 1,
            max_connections: None,
            zone: None,
            tags: Vec::new(),
            metadata: Default::default(),
            ttl_secs: 15,
        }
    }

    fn table_of(n: usize) -> ServiceTable {
        let mut t = ServiceTable::new("svc");
        for k in 0..n {
            let address = format!("10.0.0.{}:6666", k + 1);
            let instance = new_instance(format!("id-{k}"), spec(&address), [k as u8; 32], 0, 0);
            t.upsert(instance, 0);
        }
        t
    }

    #[test]
    fn hand_outs_and_shed_hints_are_counted_until_taken() {
        let mut t = table_of(2);
        let query = RankQuery {
            limit: 5,
            ..RankQuery::default()
        };
        for _ in 0..3 {
            let ranked = Ranked::of(&mut t, &query, 10);
            assert_eq!(ranked.servers.len(), 2);
        }
        assert!(t.count_hand_out_of("id-1", 10));
        assert!(!t.count_hand_out_of("nope", 10));
        // One empty instance, one busy one: the busy one is asked to shed.
        let policy = RebalancePolicy::default();
        let quiet = t.heartbeat("id-1", &[1; 32], Some(0), 20, &policy);
        assert_eq!(quiet.expect("lease").shed, 0, "the empty one sheds nothing");
        let busy = t.heartbeat("id-0", &[0; 32], Some(1000), 20, &policy);
        let shed = busy.expect("lease").shed;
        assert!(shed > 0, "the busy one is asked to shed");
        // A refused heartbeat counts nothing.
        assert!(
            t.heartbeat("id-0", &[9; 32], Some(1000), 20, &policy)
                .is_err()
        );
        let activity = t.take_activity();
        assert_eq!(
            activity.hand_outs, 4,
            "three answers' first servers and one retry"
        );
        assert_eq!(activity.shed_hints, 1);
        assert_eq!(activity.shed_connections, shed);
        assert_eq!(t.take_activity(), Activity::default(), "taken means reset");
    }

    #[test]
    fn a_sample_walks_every_instance_once_with_its_state() {
        let mut t = table_of(3);
        let policy = RebalancePolicy::default();
        t.heartbeat("id-0", &[0; 32], Some(7), 0, &policy).unwrap();
        t.heartbeat("id-1", &[1; 32], Some(5), 0, &policy).unwrap();
        assert!(t.drain("id-1", None, 0));
        // id-2 reports nothing and expires after its 15 s TTL.
        let mut seen = Vec::new();
        let figures = t.sample(20_000, &mut |i, state| seen.push((i.id.clone(), state)));
        assert_eq!(
            seen,
            vec![
                ("id-0".to_owned(), State::Expired),
                ("id-1".to_owned(), State::Expired),
                ("id-2".to_owned(), State::Expired),
            ]
        );
        assert_eq!(figures.expired, 3);
        let figures = t.sample(1_000, &mut |_, _| {});
        assert_eq!(
            (
                figures.up,
                figures.draining,
                figures.expired,
                figures.connections
            ),
            (2, 1, 0, 12)
        );
    }
}
