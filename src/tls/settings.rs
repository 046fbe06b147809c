//! The validated `[tls]` settings (SPEC 9): which files hold the certificate chain,
//! its key and the client CA, how client certificates are asked for, and whether a
//! backend's writes need one. `config/tls.rs` builds them from the file; they live
//! here so that TLS depends on nothing of the configuration layer.
//!
//! Must not read the files (`load.rs` does).

use std::path::PathBuf;

/// Whether the API asks a client for a certificate (`tls.client_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never asked for (`"none"`, the default).
    #[default]
    None,
    /// Asked for; a client without one is served, one with a certificate that does
    /// not verify against `client_ca` is refused at the handshake (`"optional"`).
    Optional,
    /// A client without a certificate that verifies is refused at the handshake
    /// (`"required"`).
    Required,
}

/// The files and rules of one TLS listener: `[tls]` for the API, or a forward
/// listener's `tls_*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// What the keys are called in the configuration, before `cert`, `key` and
    /// `client_ca`: `tls.` for the API, `forward[0].tls_` for a forward listener. Errors
    /// name the key of the file at fault with it.
    pub key_prefix: String,
    /// PEM: the server's certificate, then its chain (`tls.cert`).
    pub cert: PathBuf,
    /// PEM: its private key, PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key: PathBuf,
    /// PEM: the CA certificates client certificates must chain to (`tls.client_ca`).
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are asked for (`tls.client_auth`).
    pub client_auth: ClientAuth,
    /// Registering, heartbeating, draining and deregistering need a verified client
    /// certificate, in addition to the register token when one is configured
    /// (`tls.register_requires_client_cert`; always false on a forward listener).
    pub register_requires_client_cert: bool,
}

impl TlsConfig {
    /// The full name of the key `name` (`cert`, `key`, `client_ca`).
    pub fn key_name(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix)
    }
}
