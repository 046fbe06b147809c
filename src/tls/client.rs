//! The client side of TLS, for the operator commands and the tests: a rustls client
//! configuration on ring that trusts the system's roots, or only the given CA (as
//! `curl --cacert` does: a private CA's registry is then not trusted on a public CA's
//! word), and presents a client certificate when one is given; and reqwest clients
//! built on it, since reqwest's rustls without a provider has none of its own.
//!
//! Must not know the API. The client crate keeps its own copy of these few lines: it
//! must not depend on the server crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Where a client's TLS material is: each a PEM file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA to trust instead of the system's roots (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (and its chain) to present (`--client-cert`).
    pub client_cert: Option<PathBuf>,
    /// Its private key (`--client-key`).
    pub client_key: Option<PathBuf>,
}

/// A client configuration for `files`.
///
/// # Errors
/// A message naming the file at fault (the flag it came from is the caller's to say).
pub fn client_config(files: &ClientFiles) -> Result<ClientConfig, String> {
    let provider = super::load::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| err.to_string())?;
    let builder = match &files.ca_cert {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in certificates(ca)? {
                roots
                    .add(der)
                    .map_err(|err| format!("{}: {err}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|err| format!("the system's CA certificates: {err}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let mut config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| format!("{}: not a PEM private key: {err}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("client certificate: {err}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs both its certificate and its key".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest builder whose HTTPS uses `files` (plain HTTP is unaffected).
///
/// # Errors
/// As [`client_config`].
pub fn reqwest_builder(files: &ClientFiles) -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(files)?))
}

/// A reqwest client with the system's roots and no client certificate (what
/// `reqwest::Client::new()` would be, had reqwest's rustls a provider of its own).
///
/// # Panics
/// When the system's roots cannot be read at all (as `reqwest::Client::new` panics).
pub fn reqwest_client() -> reqwest::Client {
    reqwest_builder(&ClientFiles::default())
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .expect("an HTTP client")
}

fn certificates(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    super::load::certificates("", path).map_err(|err| err.message)
}
