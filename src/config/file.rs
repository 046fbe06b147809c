//! The config file as written: the TOML types of every section (`deny_unknown_fields`,
//! so an unknown key is named by the parser) and reading and parsing the file.
//!
//! Must not validate values or apply defaults beyond serde's: each section's file does.

use std::path::Path;

use serde::Deserialize;

use super::error::ConfigError;

/// `[tokens]`: a single register token or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTokens {
    pub(super) admin: Option<String>,
    pub(super) register: Option<OneOrMany>,
    pub(super) read: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[forward]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileForward {
    pub(super) listen: String,
    /// `None` = `"default"`, but for an SNI-routing listener, where it is the service of
    /// hellos that match no route (none: refused).
    pub(super) service: Option<String>,
    pub(super) proxy_protocol: Option<String>,
    pub(super) max_connections: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) max_fails: Option<u32>,
    pub(super) fail_timeout_secs: Option<u64>,
    pub(super) hash: Option<String>,
    pub(super) tcp_keepalive_secs: Option<u64>,
    pub(super) protocol: Option<String>,
    pub(super) udp_responses: Option<u64>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) tls_client_ca: Option<String>,
    pub(super) tls_client_auth: Option<String>,
    pub(super) tls_alpn: Option<Vec<String>>,
    pub(super) tls_handshake_timeout_ms: Option<u64>,
    pub(super) sni_routes: Option<std::collections::BTreeMap<String, String>>,
}

fn default_service() -> String {
    "default".to_owned()
}

/// `[[static]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStatic {
    #[serde(default = "default_service")]
    pub(super) service: String,
    pub(super) address: String,
    pub(super) weight: Option<i64>,
    pub(super) max_connections: Option<i64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) register_per_sec: Option<u32>,
    pub(super) read_per_sec: Option<u32>,
}

/// `[rebalance]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRebalance {
    pub(super) enabled: Option<bool>,
    pub(super) tolerance: Option<f64>,
    pub(super) shed_max_ratio: Option<f64>,
    pub(super) reconnect_jitter_ms: Option<u64>,
}

/// `[dashboard]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDashboard {
    pub(super) history_sample_secs: Option<u64>,
    pub(super) history_minutes: Option<u64>,
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) http: Option<String>,
    pub(super) db: Option<String>,
    pub(super) insecure: Option<bool>,
    pub(super) drain_timeout_secs: Option<u64>,
    pub(super) http_header_timeout_secs: Option<u64>,
    pub(super) http_idle_timeout_secs: Option<u64>,
    pub(super) http_max_connections: Option<u64>,
    pub(super) tokens: Option<FileTokens>,
    pub(super) forward: Option<Vec<FileForward>>,
    #[serde(rename = "static")]
    pub(super) statics: Option<Vec<FileStatic>>,
    pub(super) rebalance: Option<FileRebalance>,
    pub(super) limits: Option<FileLimits>,
    pub(super) dns: Option<FileDns>,
    pub(super) tls: Option<FileTls>,
    pub(super) dashboard: Option<FileDashboard>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) register_requires_client_cert: Option<bool>,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDns {
    pub(super) listen: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) ttl_secs: Option<u64>,
    pub(super) answers: Option<u64>,
    pub(super) name_servers: Option<Vec<String>>,
    pub(super) queries_per_sec: Option<u32>,
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_text(path, &text)
}

pub(super) fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("htp = \"x\"", &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
        let err = Config::from_toml(
            "[[forward]]\nlisten = \"127.0.0.1:1\"\nproxy = \"v1\"",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("proxy"), "{err}");
    }
}
