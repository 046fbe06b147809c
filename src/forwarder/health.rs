//! Health checks of static instances (`[[static]]`): a connect every [`CHECK_EVERY`]
//! (TCP, or to the socket of a `unix:` instance: down while the path is missing or
//! refuses), with hysteresis, reported to the registry together with the forwarder's
//! own connection count for the instance. A check that cannot open its socket for
//! want of descriptors (EMFILE, ENFILE) gives no verdict: our shortage is not the
//! instance's failure.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{LiveCounts, backend};
use crate::hub::Hub;

/// Interval between two checks of one instance.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Connect timeout of a check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failures that take an up instance down.
pub const FALL: u32 = 2;
/// Consecutive successes that bring a down instance up.
pub const RISE: u32 = 1;

/// Up/down with hysteresis (pingora's `consecutive_success` / `consecutive_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    streak: u32,
}

impl Hysteresis {
    /// Starts down: nothing is handed out before a check passes.
    pub fn new() -> Self {
        Hysteresis {
            up: false,
            streak: 0,
        }
    }

    /// Feeds one check result; returns the state after it.
    pub fn observe(&mut self, passed: bool) -> bool {
        if passed == self.up {
            self.streak = 0;
        } else {
            self.streak += 1;
            let needed = if self.up { FALL } else { RISE };
            if self.streak >= needed {
                self.up = passed;
                self.streak = 0;
            }
        }
        self.up
    }
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis::new()
    }
}

/// How a static instance is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Connect to it (TCP, or its Unix socket).
    Connect,
    /// None: only UDP listeners forward to its service, and a UDP port cannot be
    /// probed by connecting. It stays up, and the UDP listener takes it out for
    /// `fail_timeout` when its port refuses (ICMP), as nginx's passive checks do.
    Passive,
}

/// Checks one static instance until `stop` fires.
pub async fn check_loop(
    hub: Hub,
    service: String,
    id: String,
    address: String,
    probe: Probe,
    counts: Arc<LiveCounts>,
    stop: CancellationToken,
) {
    let mut state = Hysteresis::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let passed = match probe {
            Probe::Passive => true,
            Probe::Connect => {
                match tokio::time::timeout(CHECK_TIMEOUT, backend::connect(&address)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(err)) if backend::is_fd_shortage(&err) => {
                        tracing::debug!(%service, %address, %err, "health check skipped: out of file descriptors");
                        hub.set_health(&service, &id, state.up, counts.get(&id));
                        continue;
                    }
                    Ok(Err(_)) | Err(_) => false,
                }
            }
        };
        let was = state.up;
        let up = state.observe(passed);
        if up != was {
            if up {
                tracing::info!(%service, %address, "static instance up");
            } else {
                tracing::warn!(%service, %address, "static instance down: connect fails");
            }
        }
        hub.set_health(&service, &id, up, counts.get(&id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_down_rises_on_one_success_falls_on_two_failures() {
        let mut h = Hysteresis::new();
        assert!(!h.observe(false));
        assert!(h.observe(true));
        assert!(h.observe(false), "one failure is not enough");
        assert!(h.observe(true));
        assert!(h.observe(false));
        assert!(!h.observe(false));
        assert!(h.observe(true));
    }
}
