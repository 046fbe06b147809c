//! Per-source-IP rate limits of SPEC section 6 (`[limits]` `register_per_sec`,
//! `read_per_sec`): a token bucket per client address (governor, GCRA), a burst of
//! one second's worth; beyond it `429 rate_limited` with `Retry-After`.
//!
//! The per-address state is bounded: addresses whose bucket is full again are
//! dropped by [`RateLimits::forget_idle`], which the server runs every minute.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Registrations.
    Register,
    /// `GET /servers`.
    Read,
}

/// The configured limits; an unset one lets everything through.
#[derive(Debug, Default)]
pub struct RateLimits {
    register: Option<DefaultKeyedRateLimiter<IpAddr>>,
    read: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn keyed(per_sec: Option<u32>) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    let rate = NonZeroU32::new(per_sec?)?;
    Some(RateLimiter::keyed(Quota::per_second(rate)))
}

impl RateLimits {
    /// Limits of `register_per_sec` and `read_per_sec` requests per second per
    /// source address.
    pub fn new(register_per_sec: Option<u32>, read_per_sec: Option<u32>) -> Self {
        RateLimits {
            register: keyed(register_per_sec),
            read: keyed(read_per_sec),
        }
    }

    /// Counts one request of `peer` against `limit`.
    ///
    /// # Errors
    /// [`ApiError::RateLimited`] with the wait before the next one is allowed.
    pub fn check(&self, limit: Limit, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let limiter = match limit {
            Limit::Register => &self.register,
            Limit::Read => &self.read,
        };
        let (Some(limiter), Some(peer)) = (limiter, peer) else {
            return Ok(());
        };
        limiter.check_key(&peer).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Whole seconds, rounded up: Retry-After has no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited(Duration::from_secs(secs.max(1)))
        })
    }

    /// Drops the state of addresses whose bucket is full again (they would be
    /// treated the same without it).
    pub fn forget_idle(&self) {
        for limiter in [&self.register, &self.read].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_429_with_a_whole_second_retry() {
        let limits = RateLimits::new(Some(3), None);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check(Limit::Register, Some(a)).is_ok());
        }
        match limits.check(Limit::Register, Some(a)) {
            Err(ApiError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(1)),
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(
            limits.check(Limit::Register, Some(b)).is_ok(),
            "per address"
        );
        assert!(
            limits.check(Limit::Read, Some(a)).is_ok(),
            "reads are unlimited"
        );
        assert!(
            limits.check(Limit::Register, None).is_ok(),
            "no address, no limit"
        );
    }
}
