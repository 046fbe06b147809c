//! Small helpers of the printed reports.

use std::collections::BTreeMap;
use std::time::Duration;

/// `items` rendered by `f`, joined by `sep`.
pub fn join<T>(
    items: impl IntoIterator<Item = T>,
    sep: &str,
    f: impl FnMut(T) -> String,
) -> String {
    items.into_iter().map(f).collect::<Vec<_>>().join(sep)
}

/// `/proc/loadavg`, trimmed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Answers of one kind of request, merged over connections.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Answers that counted as success.
    pub ok: u64,
    /// Answers of any status.
    pub answered: u64,
    /// The other answers, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Connect/IO errors and timeouts.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Answer latencies, in the unit the bench chose (sorted when it says so).
    pub latencies: Vec<u64>,
}

impl Tally {
    pub fn note_error(&mut self, err: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.into());
        }
    }

    /// Counts an answer; its latency is kept while fewer than `max_samples` are.
    pub fn note_answer(&mut self, status: u16, ok: bool, latency: u64, max_samples: usize) {
        self.answered += 1;
        if ok {
            self.ok += 1;
        } else {
            *self.statuses.entry(status).or_default() += 1;
        }
        if self.latencies.len() < max_samples {
            self.latencies.push(latency);
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.answered += other.answered;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    /// Non-success answers.
    pub fn non_ok(&self) -> u64 {
        self.answered - self.ok
    }
}

/// Nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A figure with as many decimals as its size warrants; `-` for none.
pub fn fmt_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else if v.abs() >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        }
        _ => "-".to_owned(),
    }
}

/// `a / b` to two decimals; `-` when either is missing or `b` is 0.
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b != 0.0 => {
            format!("{:.2}", a / b)
        }
        _ => "-".to_owned(),
    }
}

/// One goal line: `figure` (a ratio to the baseline) against `target`, `at_most` or at
/// least, printed as met or MISSED; `None` when the baseline gave no figure.
pub fn goal(what: &str, figure: Option<f64>, target: f64, at_most: bool) {
    match figure {
        None => println!("  {what}: no figure (the baseline is missing)"),
        Some(v) => {
            let met = if at_most { v <= target } else { v >= target };
            let sign = if at_most { "≤" } else { "≥" };
            println!(
                "  {what}: {v:.3}× (goal {sign} {target}×): {}",
                if met { "met" } else { "MISSED" }
            );
        }
    }
}
