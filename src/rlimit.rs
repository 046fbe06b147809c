//! The open-file limit: raised from the inherited soft limit to the hard limit at
//! start (as nginx's `worker_rlimit_nofile` and HAProxy do), logged, and compared
//! with what the configuration may need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but connections: the store, logs, listeners.
const RESERVED: u64 = 64;

/// What the limit was and became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit inherited.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
///
/// # Errors
/// The system's error when the limit cannot be read or set.
pub fn raise() -> Result<NoFile, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(NoFile {
        before: soft,
        now: soft.max(hard),
    })
}

/// Descriptors the configuration may hold at once: two per relayed connection
/// (device and backend) for every capped listener, one per HTTP connection, and a
/// reserve. `None` when a forward listener has no cap: then nothing bounds it.
pub fn needed(forward_caps: &[Option<u64>], http_max_connections: u64) -> Option<u64> {
    let mut total = RESERVED.saturating_add(http_max_connections);
    for cap in forward_caps {
        total = total.saturating_add(cap.as_ref()?.saturating_mul(2));
    }
    Some(total)
}

/// Raises the limit and logs the outcome; warns when it is below `needed`.
pub fn raise_and_report(needed: Option<u64>) {
    match raise() {
        Ok(limit) => {
            tracing::info!(
                before = limit.before,
                now = limit.now,
                "open file limit (RLIMIT_NOFILE)"
            );
            if let Some(needed) = needed.filter(|n| *n > limit.now) {
                tracing::warn!(
                    limit = limit.now,
                    needed,
                    "the open file limit is below what max_connections may need; \
                     raise the hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower max_connections"
                );
            }
        }
        Err(err) => tracing::warn!(%err, "could not raise the open file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_relayed_connection_plus_http_and_a_reserve() {
        assert_eq!(
            needed(&[Some(1_000), Some(10)], 100),
            Some(64 + 100 + 2_020)
        );
        assert_eq!(needed(&[], 10_000), Some(10_064));
        assert_eq!(needed(&[Some(5), None], 10), None, "an uncapped listener");
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let limit = raise().expect("getrlimit works here");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((limit.now, soft), (hard, hard));
    }
}
