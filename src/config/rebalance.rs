//! `[rebalance]`: the rebalancing hint's settings, validated into the registry's
//! [`RebalancePolicy`].
//!
//! Must not compute hints (`registry::rank` does).

use super::error::{ConfigError, invalid};
use super::file::FileRebalance;
use crate::registry::RebalancePolicy;

/// Largest `[rebalance] reconnect_jitter_ms`: one hour.
const MAX_RECONNECT_JITTER_MS: u64 = 3_600_000;

/// `[rebalance]` over the registry's defaults.
pub(super) fn merge(file: Option<FileRebalance>) -> Result<RebalancePolicy, ConfigError> {
    let r = file.unwrap_or_default();
    let defaults = RebalancePolicy::default();
    let rebalance = RebalancePolicy {
        enabled: r.enabled.unwrap_or(defaults.enabled),
        tolerance: r.tolerance.unwrap_or(defaults.tolerance),
        shed_max_ratio: r.shed_max_ratio.unwrap_or(defaults.shed_max_ratio),
        reconnect_jitter_ms: r
            .reconnect_jitter_ms
            .unwrap_or(defaults.reconnect_jitter_ms),
    };
    if rebalance.reconnect_jitter_ms > MAX_RECONNECT_JITTER_MS {
        return Err(invalid(
            "rebalance.reconnect_jitter_ms",
            "must be within 0..=3600000 (one hour)",
        ));
    }
    if !(0.0..=10.0).contains(&rebalance.tolerance) {
        return Err(invalid(
            "rebalance.tolerance",
            "must be within 0.0..=10.0 (0.10 = 10 %)",
        ));
    }
    if !(0.0..=1.0).contains(&rebalance.shed_max_ratio) {
        return Err(invalid(
            "rebalance.shed_max_ratio",
            "must be within 0.0..=1.0 (0.01 = 1 %)",
        ));
    }
    Ok(rebalance)
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::from_toml("[rebalance]\ntolerance = -1.0", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("rebalance.tolerance"), "{err}");
    }
}
