//! What a simulated scenario prints: one row per heartbeat round, the totals, and
//! each goal beside its figure.

use std::fmt;

use crate::registry::Millis;

/// One heartbeat round of a simulated fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// Simulated time at the end of the round.
    pub at_ms: Millis,
    /// Most connections on a running server over the mean.
    pub max_over_mean: f64,
    /// Fewest connections on a running server over the mean.
    pub min_over_mean: f64,
    /// Devices that connected to a server in the round (each one moved).
    pub moved: u64,
    /// All devices of the fleet.
    pub devices: u64,
    /// `/servers` answers per second (every connect attempt resolves first).
    pub resolves_per_sec: f64,
    /// Connections the servers closed on `shed` hints.
    pub shed: u64,
    /// Largest `shed` over connections held, of one non-draining server's heartbeat.
    pub max_shed_ratio: f64,
    /// Worst second: the most reconnects one server took over its fair share; `None`
    /// when no second had enough reconnects to judge.
    pub worst_reconnect_share: Option<f64>,
    /// Devices still waiting to reconnect at the end of the round.
    pub in_flight: u64,
}

impl Round {
    /// Whether every running server is within `tolerance` of the mean.
    pub fn within(&self, tolerance: f64) -> bool {
        self.max_over_mean <= 1.0 + tolerance && self.min_over_mean >= 1.0 - tolerance
    }
}

/// A goal of the issue beside the figure the run gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// What is asked, e.g. "within ±10 % in ≤ 10 rounds".
    pub asked: String,
    /// What the run measured.
    pub figure: String,
    /// Whether the figure meets the goal.
    pub met: bool,
}

impl Goal {
    /// A goal and its figure.
    pub fn new(asked: impl Into<String>, figure: impl Into<String>, met: bool) -> Goal {
        Goal {
            asked: asked.into(),
            figure: figure.into(),
            met,
        }
    }
}

/// One phase of a scenario (an event and what followed), with its goals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Phase {
    /// What happened, e.g. "scale-out 1000 -> 1100".
    pub title: String,
    /// The rounds after the event.
    pub rounds: Vec<Round>,
    /// First round (1-based) that ended within the tolerance, if any.
    pub converged_after: Option<usize>,
    /// Connections moved in all.
    pub moved: u64,
    /// The least that had to move (see each scenario).
    pub needed: u64,
    /// Connections shed after the first converged round.
    pub shed_after_converged: u64,
    /// The goals and their figures.
    pub goals: Vec<Goal>,
    /// Figures printed for information, with no goal of their own.
    pub notes: Vec<String>,
    /// Print every n-th round only (long phases); 1 prints all.
    pub print_every: usize,
}

impl Phase {
    /// Every goal met.
    pub fn all_met(&self) -> bool {
        self.goals.iter().all(|g| g.met)
    }

    /// Most reconnects over the fair share in any judged second of the phase.
    pub fn worst_reconnect_share(&self) -> Option<f64> {
        self.rounds
            .iter()
            .filter_map(|r| r.worst_reconnect_share)
            .reduce(f64::max)
    }

    /// Largest per-heartbeat shed ratio of the phase.
    pub fn max_shed_ratio(&self) -> f64 {
        self.rounds
            .iter()
            .map(|r| r.max_shed_ratio)
            .fold(0.0, f64::max)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "## {}", self.title)?;
        writeln!(
            f,
            "{:>5} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>7} {:>9} {:>9}",
            "round",
            "t (s)",
            "max/mean",
            "min/mean",
            "moved %",
            "/servers/s",
            "shed",
            "shed %",
            "reconn.×",
            "in flight"
        )?;
        let every = self.print_every.max(1);
        let last = self.rounds.len();
        for (i, r) in self.rounds.iter().enumerate() {
            let n = i + 1;
            if n % every != 0 && n != 1 && n != last && Some(n) != self.converged_after {
                continue;
            }
            let share = r
                .worst_reconnect_share
                .map_or("-".to_owned(), |s| format!("{s:.2}"));
            writeln!(
                f,
                "{:>5} {:>8.1} {:>8.3} {:>8.3} {:>9.3} {:>10.0} {:>9} {:>7.2} {:>9} {:>9}",
                n,
                r.at_ms as f64 / 1000.0,
                r.max_over_mean,
                r.min_over_mean,
                100.0 * r.moved as f64 / r.devices.max(1) as f64,
                r.resolves_per_sec,
                r.shed,
                100.0 * r.max_shed_ratio,
                share,
                r.in_flight
            )?;
        }
        let converged = self
            .converged_after
            .map_or("not within the run".to_owned(), |n| n.to_string());
        writeln!(
            f,
            "rounds to ±10 %: {converged}; moved {} against {} needed ({:.2} ×); shed after converging: {}",
            self.moved,
            self.needed,
            self.moved as f64 / self.needed.max(1) as f64,
            self.shed_after_converged
        )?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for g in &self.goals {
            let verdict = if g.met { "met" } else { "MISSED" };
            writeln!(f, "goal: {:<62} {:<28} {verdict}", g.asked, g.figure)?;
        }
        Ok(())
    }
}
