//! Rounds of a phase: every setup measured `SB_BENCH_ROUNDS` times, the order reversed
//! on every other round; the median and percentiles the tables show.
//!
//! Must not start anything itself: the phase's `measure` does.

use anyhow::Result;

use crate::Config;
use crate::proxy::Setup;

/// The median; NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// Runs `measure` for every one of `setups`, `cfg.rounds` times, the order reversed on
/// every other round (so drift in the machine's load does not favour one setup);
/// returns the successful results per setup.
pub fn run_rounds<T>(
    cfg: &Config,
    setups: &[Setup],
    label: &str,
    mut measure: impl FnMut(Setup) -> Result<T>,
) -> Vec<(Setup, Vec<T>)> {
    let mut results: Vec<(Setup, Vec<T>)> = setups.iter().map(|&s| (s, Vec::new())).collect();
    for round in 0..cfg.rounds {
        let mut order = setups.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            eprintln!("[{label}, round {}] {}", round + 1, setup.name());
            match measure(setup) {
                Ok(r) => {
                    if let Some(slot) = results.iter_mut().find(|(s, _)| *s == setup) {
                        slot.1.push(r);
                    }
                }
                Err(err) => eprintln!("  failed: {err:#}"),
            }
        }
    }
    results
}

/// The `q` quantile of sorted values (nearest rank); NaN for none.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}
