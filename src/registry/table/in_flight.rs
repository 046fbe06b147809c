//! Devices asked to disconnect and not yet back: the `shed` a service answered over
//! the last reconnect jitter, in a few time buckets.
//!
//! A shed device waits a random time in `0..reconnect_jitter_ms` before it asks
//! `/servers` again, so of `n` devices shed `age` ago about `n × (1 − age / jitter)`
//! are still on their way. The rebalancing rule counts them as already filling the
//! holes they will land in.

use std::collections::VecDeque;

use crate::registry::Millis;

/// Buckets kept at most: the jitter window is cut into this many slices (or 100 ms
/// ones, whichever is longer), so the memory is bounded whatever the jitter.
const MAX_BUCKETS: u64 = 64;

/// Shortest bucket.
const MIN_BUCKET_MS: Millis = 100;

/// Recent `shed` answers, summed per time bucket, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RecentShed {
    buckets: VecDeque<(Millis, u64)>,
}

fn bucket_ms(jitter_ms: Millis) -> Millis {
    (jitter_ms / MAX_BUCKETS).max(MIN_BUCKET_MS)
}

impl RecentShed {
    /// Records `shed` devices asked to disconnect at `now`.
    pub fn record(&mut self, now: Millis, shed: u64, jitter_ms: Millis) {
        if shed == 0 || jitter_ms == 0 {
            return;
        }
        self.forget_before(now.saturating_sub(jitter_ms));
        let start = now - now % bucket_ms(jitter_ms);
        match self.buckets.back_mut() {
            Some((at, total)) if *at == start => *total += shed,
            _ => self.buckets.push_back((start, shed)),
        }
        // A smaller jitter than when the buckets were made: keep the bound anyway.
        while self.buckets.len() as u64 > MAX_BUCKETS + 1 {
            self.buckets.pop_front();
        }
    }

    /// Devices shed over the last jitter that are expected to be still reconnecting.
    pub fn in_flight(&self, now: Millis, jitter_ms: Millis) -> f64 {
        if jitter_ms == 0 {
            return 0.0;
        }
        let jitter = jitter_ms as f64;
        self.buckets
            .iter()
            .map(|&(at, n)| {
                let age = now.saturating_sub(at) as f64;
                n as f64 * (1.0 - age / jitter).max(0.0)
            })
            .sum()
    }

    fn forget_before(&mut self, cutoff: Millis) {
        while self.buckets.front().is_some_and(|&(at, _)| at < cutoff) {
            self.buckets.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_devices_come_back_over_one_jitter() {
        let mut recent = RecentShed::default();
        recent.record(10_000, 100, 5_000);
        assert_eq!(recent.in_flight(10_000, 5_000), 100.0);
        assert!((recent.in_flight(12_500, 5_000) - 50.0).abs() < 1e-9);
        assert_eq!(recent.in_flight(15_000, 5_000), 0.0);
        recent.record(15_001, 10, 5_000);
        assert_eq!(recent.buckets.len(), 1, "the old bucket is forgotten");
    }

    #[test]
    fn no_jitter_means_nothing_in_flight_and_the_buckets_stay_bounded() {
        let mut recent = RecentShed::default();
        recent.record(1_000, 5, 0);
        assert_eq!(recent.in_flight(1_000, 0), 0.0);
        for t in 0..10_000 {
            recent.record(t * 100, 1, 3_600_000);
        }
        assert!(recent.buckets.len() as u64 <= MAX_BUCKETS + 1);
    }
}
