//! The open-file limit: raised from the inherited soft limit to the hard limit at
//! start (as nginx's `worker_rlimit_nofile` and HAProxy do), logged, and compared
//! with what the configuration may need; and the fd budget, the pure arithmetic that
//! shares the limit out (as HAProxy derives `maxconn` from it): a reserve for the
//! API, the store, health checks, DNS and the listeners' own sockets, and the rest
//! for the forwarder, as a connection cap per forward listener.
//!
//! Must not touch sockets; `forwarder/budget.rs` holds the count the budget bounds.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but connections: standard streams, the logs, the
/// main runtime's poller and wake-up descriptors, the signal pipe, the HTTP listening
/// socket, the store's pool and files, name lookups.
pub const RESERVED: u64 = 64;

/// Descriptors each forward listener's accept (or receive) loop holds: its socket,
/// its runtime's poller and wake-up descriptors, and for a moment a device it refuses.
pub const PER_LOOP: u64 = 4;

/// The DNS server's own sockets (UDP and the TCP listener).
pub const DNS_SOCKETS: u64 = 2;

/// A share of the limit (the API's, DNS's) is never cut below this many connections.
pub const MIN_SHARE: u64 = 16;

/// The API's share: at most a quarter of the limit is kept for HTTP connections.
pub const API_SHARE_DIVISOR: u64 = 4;

/// DNS over TCP's share: at most an eighth of the limit.
pub const DNS_SHARE_DIVISOR: u64 = 8;

/// Descriptors a relayed TCP connection holds: the device's and the backend's.
pub const TCP_COST: u64 = 2;

/// Descriptors a UDP session holds: its connected socket to the backend.
pub const UDP_COST: u64 = 1;

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

/// The soft `RLIMIT_NOFILE` now: what the budget is made from.
///
/// # Errors
/// The system's error when the limit cannot be read.
pub fn soft_limit() -> Result<u64, nix::Error> {
    getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft)
}

/// Descriptors the configuration may hold at once: two per relayed connection
/// (device and backend) for every capped listener, one per HTTP connection, and a
/// reserve. `None` when a forward listener has no cap: then only the fd budget
/// bounds it.
pub fn needed(forward_caps: &[Option<u64>], http_max_connections: u64) -> Option<u64> {
    let mut total = RESERVED.saturating_add(http_max_connections);
    for cap in forward_caps {
        total = total.saturating_add(cap.as_ref()?.saturating_mul(TCP_COST));
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

/// What the reserve is kept for, besides [`RESERVED`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `http_max_connections`: the API keeps up to its share of them.
    pub http_max_connections: u64,
    /// Accept and receive loops of every forward listener ([`PER_LOOP`] each).
    pub forward_loops: u64,
    /// Static instances: a health-check connect each.
    pub statics: u64,
    /// The DNS server's TCP connection cap; 0 without `[dns]`.
    pub dns_tcp_connections: u64,
}

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` it was made from.
    pub limit: u64,
    /// HTTP connections kept in the reserve (part of `reserve`).
    pub api: u64,
    /// Descriptors the forwarder never takes.
    pub reserve: u64,
    /// Descriptors relayed connections and UDP sessions may hold together.
    pub forward: u64,
}

/// `wanted` connections, but no more than a share of the limit (one `divisor`-th,
/// at least [`MIN_SHARE`]).
fn share(wanted: u64, limit: u64, divisor: u64) -> u64 {
    wanted.min((limit / divisor).max(MIN_SHARE))
}

/// Shares `limit` out: the reserve first, the rest for the forwarder.
pub fn budget(limit: u64, needs: &Needs) -> Budget {
    let api = share(needs.http_max_connections, limit, API_SHARE_DIVISOR);
    let dns = if needs.dns_tcp_connections == 0 {
        0
    } else {
        DNS_SOCKETS.saturating_add(share(needs.dns_tcp_connections, limit, DNS_SHARE_DIVISOR))
    };
    let reserve = RESERVED
        .saturating_add(api)
        .saturating_add(needs.forward_loops.saturating_mul(PER_LOOP))
        .saturating_add(needs.statics)
        .saturating_add(dns);
    Budget {
        limit,
        api,
        reserve,
        forward: limit.saturating_sub(reserve),
    }
}

/// One forward listener, as the budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Its configured `max_connections`, if any.
    pub max_connections: Option<u64>,
    /// Descriptors one of its connections holds ([`TCP_COST`] or [`UDP_COST`]).
    pub cost: u64,
}

/// A forward listener's connection cap, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `max_connections` as configured: the budget holds it.
    Configured(u64),
    /// `max_connections` was more than the whole budget holds: lowered to that.
    Clamped {
        /// What the configuration asked for.
        configured: u64,
        /// What the budget holds.
        allowed: u64,
    },
    /// No `max_connections`: an equal share of the budget.
    Derived(u64),
}

impl Cap {
    /// The cap to enforce.
    pub fn get(self) -> u64 {
        match self {
            Cap::Configured(n) | Cap::Derived(n) | Cap::Clamped { allowed: n, .. } => n,
        }
    }
}

/// Each listener's cap out of `forward` descriptors, in the order given.
///
/// A configured `max_connections` stays unless the whole budget cannot hold it;
/// then it is clamped to what it can. Listeners without one share equally what
/// the others' caps leave, and never get less than an equal share of the whole
/// budget (overcommitted caps do not starve them: the shared count in
/// `forwarder/budget.rs` is what keeps the total within `forward`).
pub fn caps(forward: u64, wanted: &[Wanted]) -> Vec<Cap> {
    let listeners = u64::try_from(wanted.len()).unwrap_or(u64::MAX).max(1);
    let mut capped_fds: u64 = 0;
    let mut uncapped: u64 = 0;
    for w in wanted {
        match w.max_connections {
            Some(max) => {
                let allowed = forward / w.cost.max(1);
                capped_fds =
                    capped_fds.saturating_add(max.min(allowed).saturating_mul(w.cost.max(1)));
            }
            None => uncapped += 1,
        }
    }
    let left_each = forward.saturating_sub(capped_fds) / uncapped.max(1);
    let uncapped_fds = left_each.max(forward / listeners);
    wanted
        .iter()
        .map(|w| {
            let cost = w.cost.max(1);
            match w.max_connections {
                None => Cap::Derived(uncapped_fds / cost),
                Some(max) if max.saturating_mul(cost) <= forward => Cap::Configured(max),
                Some(max) => Cap::Clamped {
                    configured: max,
                    allowed: forward / cost,
                },
            }
        })
        .collect()
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
        assert_eq!(soft_limit().unwrap(), soft);
    }

    fn needs(http: u64, loops: u64) -> Needs {
        Needs {
            http_max_connections: http,
            forward_loops: loops,
            ..Needs::default()
        }
    }

    #[test]
    fn a_low_limit_keeps_a_quarter_for_the_api_and_the_fixed_reserve() {
        // Issue 21's machine: 400 descriptors, the default 10,000 HTTP connections,
        // one forward listener on two cores.
        let b = budget(400, &needs(10_000, 2));
        assert_eq!(b.api, 100);
        assert_eq!(b.reserve, 64 + 100 + 2 * 4);
        assert_eq!(b.forward, 400 - 172);
        assert_eq!(b.limit, 400);
    }

    #[test]
    fn the_api_keeps_no_more_than_it_may_open() {
        let b = budget(1_000_000, &needs(10_000, 4));
        assert_eq!(b.api, 10_000, "http_max_connections, not a quarter");
        assert_eq!(b.forward, 1_000_000 - 64 - 10_000 - 16);
        assert_eq!(budget(100, &needs(10, 0)).api, 10);
        assert_eq!(
            budget(40, &needs(10_000, 0)).api,
            MIN_SHARE,
            "never under MIN_SHARE"
        );
    }

    #[test]
    fn statics_and_dns_are_kept_too() {
        let with = Needs {
            statics: 3,
            dns_tcp_connections: 256,
            ..needs(20, 1)
        };
        let b = budget(800, &with);
        // DNS: its two sockets and min(256, 800 / 8) connections.
        assert_eq!(b.reserve, 64 + 20 + 4 + 3 + 2 + 100);
        assert_eq!(b.forward, 800 - b.reserve);
    }

    #[test]
    fn a_limit_below_the_reserve_leaves_the_forwarder_nothing() {
        let b = budget(50, &needs(10_000, 2));
        assert_eq!(b.forward, 0);
        assert_eq!(caps(b.forward, &[tcp(None)]), [Cap::Derived(0)]);
    }

    #[test]
    fn an_unlimited_limit_does_not_overflow() {
        let b = budget(u64::MAX, &needs(u64::MAX, u64::MAX));
        assert_eq!(b.forward, 0, "a reserve as big as the limit");
        let b = budget(u64::MAX, &needs(10_000, 2));
        assert!(b.forward > u64::MAX / 2);
        assert_eq!(caps(b.forward, &[tcp(None)]), [Cap::Derived(b.forward / 2)]);
    }

    fn tcp(max: Option<u64>) -> Wanted {
        Wanted {
            max_connections: max,
            cost: TCP_COST,
        }
    }

    fn udp(max: Option<u64>) -> Wanted {
        Wanted {
            max_connections: max,
            cost: UDP_COST,
        }
    }

    #[test]
    fn uncapped_listeners_share_the_budget_by_their_cost() {
        assert_eq!(caps(228, &[tcp(None)]), [Cap::Derived(114)]);
        assert_eq!(
            caps(1_000, &[tcp(None), udp(None)]),
            [Cap::Derived(250), Cap::Derived(500)],
            "500 descriptors each: 250 relays, 500 sessions"
        );
        assert_eq!(caps(1_000, &[]), []);
    }

    #[test]
    fn a_cap_above_the_budget_is_clamped_and_says_from_what() {
        assert_eq!(
            caps(228, &[tcp(Some(100_000)), udp(Some(65_536))]),
            [
                Cap::Clamped {
                    configured: 100_000,
                    allowed: 114
                },
                Cap::Clamped {
                    configured: 65_536,
                    allowed: 228
                },
            ]
        );
        assert_eq!(caps(228, &[tcp(Some(114))]), [Cap::Configured(114)]);
        assert_eq!(
            Cap::Clamped {
                configured: 9,
                allowed: 3
            }
            .get(),
            3
        );
    }

    #[test]
    fn uncapped_listeners_get_what_the_capped_ones_leave() {
        // 100 relays take 200 of 1,000: the two others share 800.
        assert_eq!(
            caps(1_000, &[tcp(Some(100)), tcp(None), udp(None)]),
            [Cap::Configured(100), Cap::Derived(200), Cap::Derived(400)]
        );
        // Caps that take it all still leave each an equal share of the whole.
        assert_eq!(
            caps(900, &[tcp(Some(450)), tcp(None), tcp(None)]),
            [Cap::Configured(450), Cap::Derived(150), Cap::Derived(150)]
        );
    }
}
