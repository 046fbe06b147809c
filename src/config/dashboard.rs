//! `[dashboard]`: the dashboard's history (`history_sample_secs`, `history_minutes`),
//! validated into [`DashboardConfig`]: how often a sample is taken and how many are
//! kept, within the history's cap on samples.
//!
//! Must not sample or keep anything (`history` does).

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::file::FileDashboard;
use crate::history::MAX_SAMPLES;

/// Default `[dashboard] history_sample_secs`.
pub const DEFAULT_HISTORY_SAMPLE_SECS: u64 = 5;
/// Default `[dashboard] history_minutes`.
pub const DEFAULT_HISTORY_MINUTES: u64 = 30;

/// `[dashboard]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Time between two history samples.
    pub history_sample: Duration,
    /// Samples kept per series: `history_minutes × 60 / history_sample_secs`.
    pub history_samples: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            history_sample: Duration::from_secs(DEFAULT_HISTORY_SAMPLE_SECS),
            history_samples: (DEFAULT_HISTORY_MINUTES * 60 / DEFAULT_HISTORY_SAMPLE_SECS) as usize,
        }
    }
}

/// `[dashboard]`: a sample every 1..=3600 s, kept for 1..=1440 minutes, at least 2
/// and at most [`MAX_SAMPLES`] samples in all.
pub(super) fn merge(file: Option<FileDashboard>) -> Result<DashboardConfig, ConfigError> {
    let d = file.unwrap_or_default();
    let sample_secs = d.history_sample_secs.unwrap_or(DEFAULT_HISTORY_SAMPLE_SECS);
    if !(1..=3600).contains(&sample_secs) {
        return Err(invalid(
            "dashboard.history_sample_secs",
            "must be within 1..=3600",
        ));
    }
    let minutes = d.history_minutes.unwrap_or(DEFAULT_HISTORY_MINUTES);
    if !(1..=1440).contains(&minutes) {
        return Err(invalid(
            "dashboard.history_minutes",
            "must be within 1..=1440 (one day)",
        ));
    }
    let samples = minutes * 60 / sample_secs;
    if samples < 2 || samples > MAX_SAMPLES as u64 {
        return Err(invalid(
            "dashboard.history_minutes",
            format!(
                "{minutes} minutes at one sample every {sample_secs} s (dashboard.history_sample_secs) \
                 are {samples} samples; at least 2 and at most {MAX_SAMPLES} are kept"
            ),
        ));
    }
    Ok(DashboardConfig {
        history_sample: Duration::from_secs(sample_secs),
        history_samples: samples as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;
    use crate::config::Config;

    fn parse(text: &str) -> Result<DashboardConfig, String> {
        Config::from_toml(text, &ServeArgs::default())
            .map(|c| c.dashboard)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_sample_every_5_s_for_30_minutes() {
        let d = parse("").unwrap();
        assert_eq!(d, DashboardConfig::default());
        assert_eq!(d.history_sample, Duration::from_secs(5));
        assert_eq!(d.history_samples, 360);
        let d = parse("[dashboard]\nhistory_sample_secs = 1\nhistory_minutes = 2").unwrap();
        assert_eq!((d.history_sample.as_secs(), d.history_samples), (1, 120));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("history_sample_secs = 0", "dashboard.history_sample_secs"),
            (
                "history_sample_secs = 3601",
                "dashboard.history_sample_secs",
            ),
            ("history_minutes = 0", "dashboard.history_minutes"),
            ("history_minutes = 1441", "dashboard.history_minutes"),
            // 1440 minutes at 1 s: 86,400 samples, over the cap.
            (
                "history_minutes = 1440\nhistory_sample_secs = 1",
                "dashboard.history_minutes",
            ),
            // One sample in the window.
            (
                "history_minutes = 1\nhistory_sample_secs = 60",
                "dashboard.history_minutes",
            ),
            ("history = 1", "history"),
        ] {
            let err = parse(&format!("[dashboard]\n{text}")).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
