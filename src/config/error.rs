//! `ConfigError`, the one error of the configuration layer, and `invalid`, which every
//! section uses to name its key (`forward[0].proxy_protocol`, `dns.listen`, ...).
//!
//! Must not read files, the environment or flags, nor know any section's rules.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The key, e.g. `forward[0].proxy_protocol`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Non-loopback HTTP bind without a register token.
    #[error(
        "refusing to serve the HTTP API on {0} (not loopback) without a register token: \
         set [tokens] register in the config file or SWITCHBOARD_REGISTER_TOKEN, \
         or require client certificates to register ([tls] register_requires_client_cert), \
         or pass --insecure to accept registrations from anyone who can reach it"
    )]
    InsecureBind(SocketAddr),
}

pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
