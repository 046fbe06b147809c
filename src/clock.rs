//! The registry's clocks: a monotonic millisecond clock for liveness (immune to wall
//! clock steps) and its conversion to Unix milliseconds for the store and for people.
//!
//! The monotonic clock is tokio's, so it is the same time the timers of the runtime
//! that started it see: a test that pauses and advances tokio time moves liveness
//! (expiry, removal, self-preservation) with it, without sleeping. Outside tests
//! tokio's `Instant` is `std::time::Instant`. Read it from within the runtime that
//! started it. Must not touch anything but time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::registry::Millis;

/// Monotonic milliseconds since start, anchored to the wall clock at start.
///
/// Wall-clock anchored: [`Clock::to_unix_ms`] is the start's Unix time plus monotonic
/// time since, so a paused-and-advanced tokio clock also advances the Unix times the
/// registry stores and shows.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    started_unix_ms: u64,
}

impl Clock {
    /// A clock starting now (tokio's now: under a paused runtime clock, the paused
    /// instant).
    pub fn start() -> Self {
        Clock {
            started: Instant::now(),
            started_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// Monotonic milliseconds since start.
    pub fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The Unix time of a monotonic instant.
    pub fn to_unix_ms(&self, at: Millis) -> u64 {
        self.started_unix_ms.saturating_add(at)
    }

    /// The current Unix time in milliseconds.
    pub fn unix_now_ms(&self) -> u64 {
        self.to_unix_ms(self.now())
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 text of a Unix millisecond time, for people.
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::start();
        assert_eq!(clock.now(), 0);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), 2_500);
        assert_eq!(clock.unix_now_ms(), clock.to_unix_ms(0) + 2_500);
    }
}
