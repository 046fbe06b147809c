//! Unit and property tests of `rank`.

use std::cmp::Ordering;

use proptest::prelude::*;

use super::reference::{Candidate, rank};
use super::*;

fn candidate(slot: u32, assumed: u64, weight: u32) -> Candidate {
    Candidate {
        slot,
        assumed_connections: assumed,
        weight,
        max_connections: None,
        // Distinct per slot but not in slot order, so ties are not settled by accident.
        tiebreak: u64::from(slot).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        in_zone: true,
    }
}

fn totals(assumed_connections: u64, weight: u64, count: u64) -> Totals {
    Totals {
        assumed_connections,
        weight,
        count,
    }
}

/// The ordering of SPEC section 2 written out field by field, with loads compared as
/// exact fractions instead of floats: an independent statement of what `rank` must do.
fn brute_force_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    let capped = |c: &Candidate| {
        c.max_connections
            .is_some_and(|max| c.assumed_connections >= max)
    };
    let (wa, wb) = (u128::from(a.weight.max(1)), u128::from(b.weight.max(1)));
    capped(a)
        .cmp(&capped(b))
        .then((!a.in_zone).cmp(&!b.in_zone))
        .then(
            (u128::from(a.assumed_connections) * wb).cmp(&(u128::from(b.assumed_connections) * wa)),
        )
        .then(a.tiebreak.cmp(&b.tiebreak))
        .then(a.slot.cmp(&b.slot))
}

fn brute_force_rank(candidates: &[Candidate]) -> Vec<u32> {
    let mut sorted = candidates.to_vec();
    sorted.sort_by(brute_force_cmp);
    sorted.iter().map(|c| c.slot).collect()
}

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            0u64..2_000,
            // Small weights make equal loads (and so the tie-breaks) common.
            prop_oneof![1u32..=4, 1u32..=1000],
            prop::option::of(0u64..2_000),
            // Few distinct tiebreaks so that the slot has to settle some ties.
            prop_oneof![0u64..4, any::<u64>()],
            any::<bool>(),
        ),
        0..40,
    )
    .prop_map(|fields| {
        fields
            .into_iter()
            .enumerate()
            .map(|(i, (assumed, weight, max, tiebreak, in_zone))| Candidate {
                slot: u32::try_from(i).expect("fewer than 40 candidates"),
                assumed_connections: assumed,
                weight,
                max_connections: max,
                tiebreak,
                in_zone,
            })
            .collect()
    })
}

#[test]
fn load_is_assumed_connections_per_unit_of_weight() {
    assert_eq!(load(0, 1), 0.0);
    assert_eq!(load(300, 3), 100.0);
    assert_eq!(load(5, 2), 2.5);
    // A weight of 0 cannot come through validation, but must not divide by zero.
    assert_eq!(load(7, 0), 7.0);
}

#[test]
fn over_cap_starts_at_the_cap() {
    assert!(!over_cap(49, Some(50)));
    assert!(over_cap(50, Some(50)));
    assert!(over_cap(51, Some(50)));
    assert!(!over_cap(u64::MAX, None));
    // A cap of 0 means the instance takes nothing.
    assert!(over_cap(0, Some(0)));
}

#[test]
fn rank_key_treats_nonsense_loads_as_zero() {
    for bad in [f64::NAN, -1.0, f64::INFINITY, -0.0] {
        assert_eq!(RankKey::new(false, bad, 0, 0).load(), 0.0, "{bad}");
    }
    assert_eq!(RankKey::new(false, 2.5, 0, 0).load(), 2.5);
}

#[test]
fn mean_load_of_nothing_is_zero() {
    assert_eq!(Totals::default().mean_load(), 0.0);
    assert_eq!(totals(30, 4, 2).mean_load(), 7.5);
}

#[test]
fn least_loaded_first_by_weight() {
    // 90 on weight 3 (30) beats 40 on weight 1 (40).
    let ranked = rank(&[
        candidate(0, 40, 1),
        candidate(1, 90, 3),
        candidate(2, 10, 1),
    ]);
    assert_eq!(ranked, vec![2, 1, 0]);
}

#[test]
fn over_cap_comes_last_even_when_least_loaded() {
    let mut capped = candidate(0, 10, 1);
    capped.max_connections = Some(10);
    let ranked = rank(&[capped, candidate(1, 500, 1), candidate(2, 100, 1)]);
    assert_eq!(ranked, vec![2, 1, 0]);
}

#[test]
fn zone_comes_before_load_but_not_before_the_cap() {
    let mut far_idle = candidate(0, 0, 1);
    far_idle.in_zone = false;
    let near_busy = candidate(1, 900, 1);
    let mut near_full = candidate(2, 5, 1);
    near_full.max_connections = Some(5);
    let mut far_full = candidate(3, 1, 1);
    far_full.max_connections = Some(1);
    far_full.in_zone = false;
    let ranked = rank(&[far_full, near_full, far_idle, near_busy]);
    assert_eq!(ranked, vec![1, 0, 2, 3]);
}

#[test]
fn fits_bound_allows_a_quarter_over_the_weighted_share() {
    // 4 equal instances holding 99 in all: after one more, the share is 25, the bound 32.
    let t = totals(99, 4, 4);
    assert!(fits_bound(30, 1, &t, BOUNDED_LOAD_FACTOR));
    assert!(fits_bound(31, 1, &t, BOUNDED_LOAD_FACTOR));
    assert!(!fits_bound(32, 1, &t, BOUNDED_LOAD_FACTOR));
    // An empty service accepts anything.
    assert!(fits_bound(
        1_000,
        1,
        &Totals::default(),
        BOUNDED_LOAD_FACTOR
    ));
    // A fresh instance in an idle service takes the first connection.
    assert!(fits_bound(0, 1, &totals(0, 1000, 10), BOUNDED_LOAD_FACTOR));
}

/// A service with mean `mean_load` whose emptiest instance is at `min_load`, with
/// nothing in flight and a deficit as if that one were the only hole.
fn balance(mean_load: f64, min_load: f64) -> Balance {
    Balance {
        mean_load,
        min_load: Some(min_load),
        hole_deficit: (mean_load * 0.9 - min_load).max(0.0),
        in_flight: 0.0,
    }
}

#[test]
fn shed_examples() {
    let policy = RebalancePolicy::default();
    let even = balance(1000.0, 950.0);
    // Mean 1000, nobody under 900: 1100 is within 10 %, 1101 is not.
    assert_eq!(shed(1100, 1, &even, &policy), 0);
    assert_eq!(shed(1101, 1, &even, &policy), 11);
    // 1 % of 2000 is less than the 1000 above the mean.
    assert_eq!(shed(2000, 1, &even, &policy), 20);
    // Weight 2 doubles the fair share: 2000 on weight 2 is exactly the mean.
    assert_eq!(shed(2000, 2, &even, &policy), 0);
    let generous = RebalancePolicy {
        shed_max_ratio: 1.0,
        ..policy
    };
    // Never below the mean, however generous the ratio.
    assert_eq!(shed(2000, 1, &even, &generous), 1000);
    assert_eq!(shed(2000, 1, &balance(999.5, 950.0), &generous), 1000);
    let off = RebalancePolicy {
        enabled: false,
        ..generous
    };
    assert_eq!(shed(2000, 1, &even, &off), 0);
    let never = RebalancePolicy {
        shed_max_ratio: 0.0,
        ..policy
    };
    assert_eq!(shed(2000, 1, &even, &never), 0);
    // Below 100 connections 1 % rounds to nothing; one is still shed.
    assert_eq!(shed(99, 1, &balance(1.0, 0.5), &policy), 1);
    assert_eq!(shed(4, 1, &balance(2.0, 0.0), &policy), 1);
}

#[test]
fn a_hole_makes_every_instance_above_the_mean_shed() {
    let policy = RebalancePolicy::default();
    // 1000 servers at 10,000 and 100 new ones empty: the mean is 9,091, the old ones
    // are exactly within 10 % of it, but the new ones are a hole.
    let mean = 10_000_000.0 / 1_100.0;
    assert_eq!(shed(10_000, 1, &balance(mean, mean), &policy), 0);
    assert_eq!(shed(10_000, 1, &balance(mean, 0.0), &policy), 100);
    // A server at the mean, or under it, never sheds.
    assert_eq!(shed(9_091, 1, &balance(mean, 0.0), &policy), 0);
    assert_eq!(shed(5_000, 1, &balance(mean, 0.0), &policy), 0);
    // Not quite a hole: the lowest is within the tolerance.
    assert_eq!(shed(9_500, 1, &balance(mean, mean * 0.91), &policy), 0);
}

#[test]
fn a_hole_the_devices_in_flight_will_fill_sheds_nothing_more() {
    let policy = RebalancePolicy::default();
    let mut b = balance(1_000.0, 800.0);
    assert_eq!(b.hole_deficit, 100.0);
    assert_eq!(shed(1_050, 1, &b, &policy), 10);
    b.in_flight = 100.0;
    assert_eq!(shed(1_050, 1, &b, &policy), 0);
    // A hot server still sheds its own excess.
    assert_eq!(shed(1_200, 1, &b, &policy), 12);
}

#[test]
fn nothing_is_shed_where_no_one_can_take_it() {
    let policy = RebalancePolicy::default();
    // Every instance is at its cap.
    let capped = Balance {
        mean_load: 700.0,
        min_load: None,
        hole_deficit: 0.0,
        in_flight: 0.0,
    };
    assert_eq!(shed(1_000, 1, &capped, &policy), 0);
    // The lowest that can take one is not below the mean (the others are capped).
    assert_eq!(shed(1_000, 1, &balance(700.0, 1_000.0), &policy), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rank_matches_brute_force(candidates in arb_candidates()) {
        let ranked = rank(&candidates);
        prop_assert_eq!(&ranked, &brute_force_rank(&candidates));
        // The brute force sorts a copy; make sure neither lost nor invented anyone.
        let mut slots = ranked.clone();
        slots.sort_unstable();
        let all: Vec<u32> = candidates.iter().map(|c| c.slot).collect();
        prop_assert_eq!(slots, all);
    }

    #[test]
    fn rank_key_orders_like_the_load(a in 0.0f64..1e12, b in 0.0f64..1e12) {
        let (ka, kb) = (RankKey::new(false, a, 0, 0), RankKey::new(false, b, 0, 0));
        prop_assert_eq!(ka.cmp(&kb), a.partial_cmp(&b).expect("finite"));
        prop_assert_eq!(ka.load(), a);
    }

    #[test]
    fn fits_bound_is_the_integer_bound(
        assumed in 0u64..100_000,
        weight in 1u32..=1000,
        others_weight in 0u64..100_000,
        others_assumed in 0u64..10_000_000,
    ) {
        let t = totals(assumed + others_assumed, u64::from(weight) + others_weight, 2);
        // ceil(5/4 × (T + 1) × w / W), in integers; one more fits while below it.
        let num = 5 * u128::from(t.assumed_connections + 1) * u128::from(weight);
        let den = 4 * u128::from(t.weight);
        let capacity = num.div_ceil(den);
        prop_assert_eq!(
            fits_bound(assumed, weight, &t, BOUNDED_LOAD_FACTOR),
            u128::from(assumed) < capacity
        );
    }

    /// The ring walk of the bounded-load pick ends only because someone always fits:
    /// the least loaded instance does.
    #[test]
    fn least_loaded_always_fits(
        fleet in prop::collection::vec((0u64..10_000, 1u32..=1000), 1..30),
    ) {
        let t = Totals {
            assumed_connections: fleet.iter().map(|&(a, _)| a).sum(),
            weight: fleet.iter().map(|&(_, w)| u64::from(w)).sum(),
            count: fleet.len() as u64,
        };
        let &(assumed, weight) = fleet
            .iter()
            .min_by(|x, y| (u128::from(x.0) * u128::from(y.1)).cmp(&(u128::from(y.0) * u128::from(x.1))))
            .expect("non-empty");
        prop_assert!(fits_bound(assumed, weight, &t, BOUNDED_LOAD_FACTOR));
    }

    #[test]
    fn shed_keeps_to_tolerance_ratio_and_mean(
        connections in 0u64..1_000_000,
        weight in 1u32..=1000,
        mean_load in 0.0f64..5_000.0,
        min_share in 0.0f64..=1.0,
        in_flight_share in 0.0f64..2.0,
        tolerance in 0.0f64..0.5,
        shed_max_ratio in 0.0f64..=1.0,
    ) {
        let policy = RebalancePolicy { enabled: true, tolerance, shed_max_ratio, ..RebalancePolicy::default() };
        let min_load = mean_load * min_share;
        let hole_deficit = (mean_load * (1.0 - tolerance) - min_load).max(0.0);
        let in_flight = hole_deficit * in_flight_share;
        let b = Balance { mean_load, min_load: Some(min_load), hole_deficit, in_flight };
        let n = shed(connections, weight, &b, &policy);
        let w = f64::from(weight);
        let own_load = connections as f64 / w;
        let hot = own_load > mean_load * (1.0 + tolerance);
        let hole = min_load < mean_load * (1.0 - tolerance) && hole_deficit > in_flight;
        let room = mean_load * min_share < mean_load;
        if !(hot || hole) || !room {
            prop_assert_eq!(n, 0);
        }
        let per_beat = (connections as f64 * shed_max_ratio).floor().max(1.0);
        prop_assert!(n as f64 <= per_beat);
        prop_assert!(n <= connections);
        prop_assert!(((connections - n) as f64) / w >= mean_load || n == 0);
        // Not lazy either: when due it sheds as much as both limits allow.
        if (hot || hole) && room && shed_max_ratio > 0.0 {
            let fair = (mean_load * w).ceil() as u64;
            let allowed = connections.saturating_sub(fair).min(per_beat as u64);
            prop_assert_eq!(n, allowed);
        }
        let off = RebalancePolicy { enabled: false, ..policy };
        prop_assert_eq!(shed(connections, weight, &b, &off), 0);
    }
}

#[test]
fn evacuation_sheds_rate_times_interval_up_to_what_is_left() {
    assert_eq!(evacuation_shed(60_000, None, 5), 0, "no rate: left alone");
    assert_eq!(evacuation_shed(60_000, Some(200), 5), 1_000);
    assert_eq!(
        evacuation_shed(700, Some(200), 5),
        700,
        "never more than reported"
    );
    assert_eq!(evacuation_shed(0, Some(200), 5), 0);
    assert_eq!(
        evacuation_shed(10, Some(3), 0),
        3,
        "an interval below 1 s counts as 1"
    );
}
