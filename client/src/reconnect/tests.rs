//! Unit and property tests of `Backoff`: its caps, its waits and its reset.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn caps_double_from_one_second_to_120_and_stay() {
    let mut backoff = Backoff::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut caps = Vec::new();
    for _ in 0..12 {
        let cap = backoff.cap();
        caps.push(cap.as_secs());
        assert!(backoff.next_wait(&mut rng) < cap);
    }
    assert_eq!(caps, [1, 2, 4, 8, 16, 32, 64, 120, 120, 120, 120, 120]);
    assert_eq!(backoff.failures(), 12);
}

#[test]
fn the_count_saturates_and_the_cap_stays_at_120_s() {
    let mut backoff = Backoff {
        failures: u32::MAX - 1,
        connected: None,
    };
    let mut rng = StdRng::seed_from_u64(1);
    assert!(backoff.next_wait(&mut rng) < RECONNECT_BACKOFF_CAP);
    assert!(backoff.next_wait(&mut rng) < RECONNECT_BACKOFF_CAP);
    assert_eq!(backoff.failures(), u32::MAX);
    assert_eq!(backoff.cap(), RECONNECT_BACKOFF_CAP);
}

#[test]
fn waits_are_random_below_the_cap_not_fixed() {
    let mut rng = StdRng::seed_from_u64(42);
    let waits: Vec<Duration> = (0..50)
        .map(|_| Backoff::new().next_wait(&mut rng))
        .collect();
    assert!(waits.iter().all(|w| *w < secs(1)), "{waits:?}");
    assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    // Full jitter: the whole range, not only its upper half.
    assert!(
        waits.iter().any(|w| *w < Duration::from_millis(500)),
        "{waits:?}"
    );
}

#[test]
fn sixty_seconds_connected_resets_the_count_and_less_does_not() {
    let mut backoff = Backoff::new();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..5 {
        backoff.next_wait(&mut rng);
    }
    let start = Instant::now();
    backoff.connected_at(start);
    assert_eq!(backoff.connected_since(), Some(start));
    assert!(!backoff.lost_at(start + secs(59)));
    assert_eq!(backoff.connected_since(), None);
    assert_eq!(
        backoff.cap(),
        secs(32),
        "a short connection keeps the count"
    );
    backoff.connected_at(start);
    assert!(backoff.lost_at(start + RECONNECT_RESET_AFTER));
    assert_eq!((backoff.failures(), backoff.cap()), (0, secs(1)));
    // Lost without a connection: nothing to judge.
    backoff.next_wait(&mut rng);
    assert!(!backoff.lost_at(start + secs(600)));
    assert_eq!(backoff.failures(), 1);
    backoff.reset();
    assert_eq!(backoff, Backoff::new());
}

#[test]
fn jitter_is_below_its_limit_and_zero_for_none() {
    let mut rng = StdRng::seed_from_u64(9);
    assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    assert_eq!(jitter(Duration::from_micros(900), &mut rng), Duration::ZERO);
    assert_eq!(jitter(Duration::from_millis(1), &mut rng), Duration::ZERO);
    for _ in 0..100 {
        assert!(jitter(secs(5), &mut rng) < secs(5));
    }
}

#[test]
fn a_wait_says_how_long() {
    let jitter = Wait::Jitter {
        wait: secs(1),
        limit: secs(5),
    };
    let backoff = Wait::Backoff {
        wait: secs(3),
        cap: secs(4),
    };
    assert_eq!((jitter.duration(), backoff.duration()), (secs(1), secs(3)));
}

proptest! {
    /// Any run of failures: each wait below its cap, the caps min(120 s, 2^n s), so
    /// never falling, and the count one per failure.
    #[test]
    fn every_wait_is_below_min_120s_2_pow_n(seed: u64, failures in 0usize..64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut backoff = Backoff::new();
        let mut last_cap = Duration::ZERO;
        for n in 0..failures {
            let cap = backoff.cap();
            let expected = secs(1u64 << n.min(7)).min(secs(120));
            prop_assert_eq!(cap, expected);
            prop_assert!(cap >= last_cap);
            last_cap = cap;
            let wait = backoff.next_wait(&mut rng);
            prop_assert!(wait < cap, "wait {:?} cap {:?}", wait, cap);
        }
        prop_assert_eq!(backoff.failures() as usize, failures);
    }

    /// Whatever came before, a connection resets the count exactly when it lasted
    /// 60 s or more; the next cap is then 1 s, else what it was.
    #[test]
    fn a_connection_resets_iff_it_lasted_60_s(
        seed: u64,
        failures in 0u32..20,
        lasted_ms in 0u64..200_000,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut backoff = Backoff::new();
        for _ in 0..failures {
            backoff.next_wait(&mut rng);
        }
        let before = backoff.cap();
        let start = Instant::now();
        backoff.connected_at(start);
        let reset = backoff.lost_at(start + Duration::from_millis(lasted_ms));
        prop_assert_eq!(reset, lasted_ms >= 60_000);
        prop_assert_eq!(backoff.cap(), if reset { secs(1) } else { before });
        prop_assert_eq!(backoff.connected_since(), None);
    }

    /// The jitter is below any limit of at least 1 ms.
    #[test]
    fn jitter_is_below_any_limit(seed: u64, limit_ms in 1u64..10_000_000) {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = Duration::from_millis(limit_ms);
        prop_assert!(jitter(limit, &mut rng) < limit);
    }
}
