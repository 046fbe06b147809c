//! `[limits]`: per-source-address rate limits of the HTTP API, validated into
//! [`LimitsConfig`].
//!
//! Must not count requests (`api::limits` does).

use super::error::{ConfigError, invalid};
use super::file::FileLimits;

/// `[limits]`: requests per second per source address (unset = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Registrations.
    pub register_per_sec: Option<u32>,
    /// `GET /servers`.
    pub read_per_sec: Option<u32>,
}

/// `[limits]`: each limit at least 1, or unset.
pub(super) fn merge(file: Option<FileLimits>) -> Result<LimitsConfig, ConfigError> {
    let l = file.unwrap_or_default();
    for (key, value) in [
        ("limits.register_per_sec", l.register_per_sec),
        ("limits.read_per_sec", l.read_per_sec),
    ] {
        if value == Some(0) {
            return Err(invalid(
                key,
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    Ok(LimitsConfig {
        register_per_sec: l.register_per_sec,
        read_per_sec: l.read_per_sec,
    })
}
