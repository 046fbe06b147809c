//! What the service tells systemd (`sd_notify(3)`, for `Type=notify`): `READY=1` once
//! every listener is bound and the store is open, `RELOADING=1` around a `SIGHUP`,
//! `STOPPING=1` when the graceful shutdown begins, and `WATCHDOG=1` pings when
//! `WatchdogSec=` is set. Without `NOTIFY_SOCKET` (not under systemd, or in tests
//! that do not set it) every call does nothing. Must not decide when the service is
//! ready: its callers do.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends `states`; a failure is logged, never fatal (systemd may be gone while we
/// stop, and a service outside systemd has no socket at all).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "could not notify systemd (NOTIFY_SOCKET)");
    }
}

/// Every listener is bound and the store is open: `READY=1`, with `status` as the
/// unit's status line (`systemctl status`).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A `SIGHUP` reload starts: `RELOADING=1` with the monotonic time systemd asks for
/// (`Type=notify-reload` requires it; `Type=notify` accepts it). [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The graceful shutdown begins: `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// `WATCHDOG=1` pings at half of `WatchdogSec=`, as `sd_watchdog_enabled(3)` advises,
/// from a loop that calls [`Watchdog::tick`] whenever it has done its work: the pings
/// stop when that loop stalls, and systemd restarts the service.
#[derive(Debug)]
pub struct Watchdog {
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// The watchdog systemd set for this process (`WATCHDOG_USEC`, and `WATCHDOG_PID`
    /// naming it when set), or `None`.
    pub fn from_env() -> Option<Watchdog> {
        let interval = sd_notify::watchdog_enabled()?;
        tracing::info!(?interval, "systemd watchdog on: pinging at half of it");
        Some(Watchdog::every(interval / 2))
    }

    fn every(every: Duration) -> Watchdog {
        Watchdog { every, last: None }
    }

    /// Whether a ping is due at `now` (and, if so, counts it as sent).
    fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Pings if half the interval passed since the last ping.
    pub fn tick(&mut self) {
        if self.due(Instant::now()) {
            notify(&[NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_most_once_per_half_interval() {
        let mut w = Watchdog::every(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(w.due(t0), "the first tick pings");
        assert!(!w.due(t0 + Duration::from_millis(250)));
        assert!(!w.due(t0 + Duration::from_millis(4_999)));
        assert!(w.due(t0 + Duration::from_secs(5)));
        assert!(!w.due(t0 + Duration::from_secs(6)));
        assert!(w.due(t0 + Duration::from_secs(11)));
    }
}
