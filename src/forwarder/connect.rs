//! Connecting a device to a backend: ask the registry for candidates (in-process, the
//! same ranking as `/servers`), connect with a timeout, try the next candidate on
//! refusal or timeout (at most [`MAX_TRIES`]), and keep failing backends out for
//! `fail_timeout` after `max_fails` failures (nginx's `max_fails`/`fail_timeout`).
//! A `unix:` backend is connected to over a Unix stream socket, by the same rules.
//! EMFILE or ENFILE on a connect is our own shortage of descriptors, not the
//! backend's failure: it is never recorded in [`FailTracker`], and no further
//! candidate is tried (each would fail the same way).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::backend::{self, Backend};
use super::stats::ListenerStats;
use crate::hub::{ForwardTarget, Hub};

/// Tries per device connection, each on the next candidate (nginx
/// `proxy_next_upstream_tries`).
pub const MAX_TRIES: usize = 3;

/// Why no backend could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The service has no instance to hand out.
    #[error("service {0} has no live backend")]
    NoBackend(String),
    /// The process or the system is out of file descriptors (EMFILE, ENFILE): the
    /// backend was not at fault and is not counted failed.
    #[error("out of file descriptors connecting to {address}: {source}")]
    FdShortage {
        /// The backend being connected to.
        address: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// Every try failed.
    #[error("{tries} tries failed, last on {address}: {reason}")]
    AllFailed {
        /// How many tries were made.
        tries: usize,
        /// The last backend tried.
        address: String,
        /// Its failure.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    down_until: Option<Instant>,
}

/// Failure bookkeeping per backend address, shared by one listener's connections.
#[derive(Debug)]
pub struct FailTracker {
    max_fails: u32,
    fail_timeout: Duration,
    by_address: Mutex<HashMap<String, Failures>>,
    /// How many addresses `by_address` holds, readable without its lock: with no
    /// failure on record (the usual case) a connection takes no lock that every
    /// worker thread shares. A count just changed by another thread may be missed,
    /// which is no different from that thread's connect coming a moment later.
    tracked: AtomicUsize,
}

impl FailTracker {
    /// A tracker that takes a backend out after `max_fails` failures within
    /// `fail_timeout`, for `fail_timeout`.
    pub fn new(max_fails: u32, fail_timeout: Duration) -> Self {
        FailTracker {
            max_fails: max_fails.max(1),
            fail_timeout,
            by_address: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.by_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the backend is out of the choice now.
    pub fn is_out(&self, address: &str, now: Instant) -> bool {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.map()
            .get(address)
            .and_then(|f| f.down_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failed connect; returns true when it takes the backend out.
    pub fn failed(&self, address: &str, now: Instant) -> bool {
        let mut map = self.map();
        if !map.contains_key(address) {
            let fresh = Failures {
                count: 0,
                first: now,
                down_until: None,
            };
            map.insert(address.to_owned(), fresh);
            self.tracked.store(map.len(), Ordering::Relaxed);
        }
        let entry = map.get_mut(address).expect("inserted above");
        if now.duration_since(entry.first) > self.fail_timeout
            || entry.down_until.is_some_and(|until| now >= until)
        {
            *entry = Failures {
                count: 0,
                first: now,
                down_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= self.max_fails && entry.down_until.is_none() {
            entry.down_until = Some(now + self.fail_timeout);
            return true;
        }
        false
    }

    /// Records a successful connect: the failure count starts over.
    pub fn succeeded(&self, address: &str) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.map();
        if map.remove(address).is_some() {
            self.tracked.store(map.len(), Ordering::Relaxed);
        }
    }
}

/// Connects to the best reachable backend of `service`.
///
/// # Errors
/// [`ConnectError`] when the service has no backend, every try failed, or the
/// process ran out of descriptors.
pub async fn connect(
    hub: &Hub,
    service: &str,
    key: Option<&[u8]>,
    timeout: Duration,
    fails: &FailTracker,
    stats: &ListenerStats,
) -> Result<(Backend, ForwardTarget), ConnectError> {
    let now = Instant::now();
    let mut candidates = hub.forward_candidates(service, key, MAX_TRIES, &|address| {
        fails.is_out(address, now)
    });
    if candidates.is_empty() {
        // Every backend is out for fail_timeout: nginx then tries them anyway rather
        // than refusing everyone.
        candidates = hub.forward_candidates(service, key, MAX_TRIES, &|_| false);
    }
    if candidates.is_empty() {
        return Err(ConnectError::NoBackend(service.to_owned()));
    }
    let mut last = None;
    for (try_index, target) in candidates.into_iter().enumerate() {
        if try_index > 0 {
            // The first candidate's hand-out was counted by the ranking.
            hub.count_hand_out(service, &target.id);
            stats.retried();
        }
        let reason = match tokio::time::timeout(timeout, backend::connect(&target.address)).await {
            Ok(Ok(stream)) => {
                fails.succeeded(&target.address);
                return Ok((stream, target));
            }
            Ok(Err(err)) if backend::is_fd_shortage(&err) => {
                return Err(ConnectError::FdShortage {
                    address: target.address,
                    source: err,
                });
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("connect timed out after {timeout:?}"),
        };
        stats.connect_failed();
        if fails.failed(&target.address, Instant::now()) {
            tracing::warn!(
                %service, address = %target.address, ?timeout,
                "backend failed max_fails times: skipped for fail_timeout"
            );
        }
        tracing::debug!(%service, address = %target.address, %reason, "connect failed; trying the next");
        last = Some((try_index + 1, target.address, reason));
    }
    let (tries, address, reason) = last.expect("at least one candidate was tried");
    Err(ConnectError::AllFailed {
        tries,
        address,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_the_window_takes_a_backend_out_for_fail_timeout() {
        let t = FailTracker::new(3, Duration::from_secs(10));
        let start = Instant::now();
        assert!(!t.failed("a", start));
        assert!(!t.failed("a", start + Duration::from_secs(1)));
        assert!(!t.is_out("a", start + Duration::from_secs(1)));
        assert!(t.failed("a", start + Duration::from_secs(2)));
        assert!(t.is_out("a", start + Duration::from_secs(3)));
        assert!(!t.is_out("a", start + Duration::from_secs(13)));
        assert!(!t.is_out("b", start));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_add_up() {
        let t = FailTracker::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert!(!t.failed("a", start));
        assert!(!t.failed("a", start + Duration::from_secs(11)));
        assert!(t.failed("a", start + Duration::from_secs(12)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t = FailTracker::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert!(!t.failed("a", start));
        t.succeeded("a");
        assert!(!t.failed("a", start));
    }
}
