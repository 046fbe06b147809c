//! The forwarder's share of the open-file limit at run time: one count of the
//! descriptors that relayed connections (two each) and UDP sessions (one each) hold,
//! shared by every forward listener of the server, so that together they never pass
//! the fd budget (`rlimit.rs` works out how big it is) and the reserve kept for the
//! API, the store and health checks is never touched. Also the once-a-second
//! throttle of the warnings a refusal or a shortage logs.
//!
//! Owns counting only: no sockets, no limits read from the system.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Descriptors the forwarder may hold, and holds now.
#[derive(Debug)]
pub struct FdBudget {
    total: AtomicU64,
    held: AtomicU64,
}

impl FdBudget {
    /// A budget of `total` descriptors, none held.
    pub fn new(total: u64) -> Self {
        FdBudget {
            total: AtomicU64::new(total),
            held: AtomicU64::new(0),
        }
    }

    /// A budget that never refuses (for a forwarder run outside a server).
    pub fn unlimited() -> Self {
        FdBudget::new(u64::MAX)
    }

    /// Changes the total (a reload that adds or removes listeners). What is held
    /// stays held; above a lowered total nothing new is taken until enough ends.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Descriptors the forwarder may hold.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Descriptors held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `fds` descriptors for one connection or session, or `None` when that
    /// would pass the total. They are given back when the [`Held`] drops.
    ///
    /// No retry loop: the count goes up first and back down on refusal, so two
    /// takers racing for the last descriptors may both be refused, never both let in.
    pub fn try_take(self: &Arc<Self>, fds: u64) -> Option<Held> {
        let before = self.held.fetch_add(fds, Ordering::AcqRel);
        if before.saturating_add(fds) > self.total() {
            self.held.fetch_sub(fds, Ordering::AcqRel);
            return None;
        }
        Some(Held {
            budget: Arc::clone(self),
            fds,
        })
    }
}

/// What a TCP listener takes from the fd budget.
#[derive(Debug, Clone)]
pub struct Share {
    /// The count every forward listener of the server shares.
    pub fds: Arc<FdBudget>,
    /// Whether the listener's connection cap is the fd budget's (derived from it, or
    /// clamped to it), so that a refusal at the cap is one at the budget.
    pub cap_from_budget: bool,
}

/// Descriptors taken from an [`FdBudget`], given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<FdBudget>,
    fds: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.fds, Ordering::AcqRel);
    }
}

/// Lets a warning through at most once per [`Throttle::EVERY`], counting the
/// occurrences in between, so a flood of refusals is one line a second, not one
/// per connection. Shared by the worker threads of a listener (atomics, no lock).
#[derive(Debug)]
pub struct Throttle {
    start: Instant,
    /// Milliseconds since `start` of the last line let through; `u64::MAX` before
    /// the first.
    last: AtomicU64,
    /// Occurrences since the last line let through.
    since: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            start: Instant::now(),
            last: AtomicU64::new(u64::MAX),
            since: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// The shortest time between two lines.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// Counts one occurrence; `Some(n)` when a line is due now, `n` being the
    /// occurrences it stands for (this one included).
    pub fn hit(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.hit_at(now)
    }

    /// [`Throttle::hit`] at `now` milliseconds since the throttle was made.
    fn hit_at(&self, now: u64) -> Option<u64> {
        self.since.fetch_add(1, Ordering::AcqRel);
        let last = self.last.load(Ordering::Acquire);
        let every = u64::try_from(Self::EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != u64::MAX && now < last.saturating_add(every) {
            return None;
        }
        // One thread wins the line; the others' occurrences go into the next.
        self.last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| self.since.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_total_and_gives_back_on_drop() {
        let budget = Arc::new(FdBudget::new(5));
        let a = budget.try_take(2).expect("2 of 5");
        let b = budget.try_take(2).expect("4 of 5");
        assert!(budget.try_take(2).is_none(), "6 would pass 5");
        assert_eq!(budget.held(), 4, "a refusal leaves nothing held");
        let c = budget.try_take(1).expect("5 of 5");
        drop(a);
        assert_eq!(budget.held(), 3);
        let d = budget.try_take(2).expect("room again");
        drop((b, c, d));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_lowered_total_refuses_until_enough_ends() {
        let budget = Arc::new(FdBudget::new(4));
        let held = [budget.try_take(2), budget.try_take(2)];
        budget.set_total(2);
        assert!(budget.try_take(1).is_none());
        drop(held);
        assert!(budget.try_take(2).is_some());
        assert!(
            Arc::new(FdBudget::unlimited())
                .try_take(u64::MAX / 2)
                .is_some()
        );
    }

    #[test]
    fn a_throttle_lets_one_line_a_second_through_with_the_count_in_between() {
        let t = Throttle::default();
        assert_eq!(t.hit_at(0), Some(1), "the first line at once");
        assert_eq!(t.hit_at(10), None);
        assert_eq!(t.hit_at(999), None);
        assert_eq!(t.hit_at(1_000), Some(3), "the two held back, and this one");
        assert_eq!(t.hit_at(1_500), None);
        assert_eq!(t.hit_at(5_000), Some(2));
    }
}
