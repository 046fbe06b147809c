//! `[[static]]`: instances from the config file, for backends that cannot register
//! themselves, validated into [`StaticConfig`]s.
//!
//! Must not health-check or register them (`forwarder::health` and `reload` do).

use super::error::{ConfigError, invalid};
use super::file::FileStatic;
use crate::registry::validate;

/// One validated static instance.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    /// Service.
    pub service: String,
    /// Canonical `host:port`, or `unix:/absolute/path` (forwarder only).
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Cap.
    pub max_connections: Option<u64>,
}

/// Every `[[static]]`, in file order (`static[0]`, `static[1]`, ...).
pub(super) fn merge(file: Option<Vec<FileStatic>>) -> Result<Vec<StaticConfig>, ConfigError> {
    file.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| validate_static(i, s))
        .collect()
}

fn validate_static(i: usize, s: FileStatic) -> Result<StaticConfig, ConfigError> {
    let key = format!("static[{i}]");
    validate::service_name(&s.service).map_err(|e| invalid(format!("{key}.service"), e.message))?;
    Ok(StaticConfig {
        service: s.service,
        address: validate::static_address(&s.address)
            .map_err(|e| invalid(format!("{key}.address"), e.message))?,
        weight: validate::weight(s.weight)
            .map_err(|e| invalid(format!("{key}.weight"), e.message))?,
        max_connections: validate::max_connections(s.max_connections)
            .map_err(|e| invalid(format!("{key}.max_connections"), e.message))?,
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::from_toml("[[static]]\naddress = \"nope\"", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("static[0].address"), "{err}");
    }
}
