//! Liveness rules of SPEC section 3: expiry, removal and self-preservation.
//!
//! Pure: every function takes the current time and ages as arguments, like r-nacos's
//! `Service::time_check` with its cut-offs passed in.

/// Milliseconds on the registry's monotonic clock (since process start). Defined
/// here, where the rules on ages live, so that `model.rs` uses liveness and not the
/// other way round.
pub type Millis = u64;

/// Removal happens after this many TTLs without a heartbeat.
pub const REMOVE_AFTER_TTLS: u64 = 3;

/// Self-preservation needs at least this many instances expiring at once.
pub const PRESERVE_MIN_EXPIRING: usize = 3;

/// Live while the last heartbeat is at most one TTL old.
pub fn is_live(age: Millis, ttl: Millis) -> bool {
    age <= ttl
}

/// Removed once the last heartbeat is more than three TTLs old.
pub fn is_removable(age: Millis, ttl: Millis) -> bool {
    age > ttl.saturating_mul(REMOVE_AFTER_TTLS)
}

/// Expired within the last TTL window: `ttl < age <= 2 × ttl`.
pub fn expired_recently(age: Millis, ttl: Millis) -> bool {
    age > ttl && age <= ttl.saturating_mul(2)
}

/// Whether losing `expiring` of `population` instances at once looks like the registry's
/// own network failing rather than the fleet: more than half, and at least three.
pub fn looks_like_partition(expiring: usize, population: usize) -> bool {
    expiring >= PRESERVE_MIN_EXPIRING && expiring * 2 > population
}

/// A service's self-preservation episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preservation {
    /// When it began.
    pub since: Millis,
    /// When it ends at the latest (3 × the largest TTL of the frozen set).
    pub until: Millis,
    /// Ids of the instances live or recently expired when it began: the set that keeps
    /// being handed out.
    pub frozen: Vec<String>,
}

impl Preservation {
    /// Whether the episode should end now: the deadline passed, or enough of the frozen
    /// set heartbeats again that the partition test no longer holds.
    pub fn should_end(&self, now: Millis, still_expired: usize, frozen_present: usize) -> bool {
        now >= self.until || !looks_like_partition(still_expired, frozen_present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_up_to_ttl_then_expired_then_removed() {
        assert!(is_live(1000, 1000));
        assert!(!is_live(1001, 1000));
        assert!(expired_recently(1001, 1000));
        assert!(expired_recently(2000, 1000));
        assert!(!expired_recently(2001, 1000));
        assert!(!is_removable(3000, 1000));
        assert!(is_removable(3001, 1000));
    }

    #[test]
    fn partition_needs_majority_and_three() {
        assert!(!looks_like_partition(2, 2));
        assert!(looks_like_partition(3, 5));
        assert!(!looks_like_partition(3, 6));
        assert!(looks_like_partition(4, 6));
    }

    #[test]
    fn episode_ends_at_deadline_or_when_heartbeats_return() {
        let p = Preservation {
            since: 0,
            until: 3000,
            frozen: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        };
        assert!(!p.should_end(100, 4, 4));
        assert!(p.should_end(100, 2, 4));
        assert!(p.should_end(3000, 4, 4));
    }
}
