//! HTTPS for the registry calls: a rustls client configuration on ring that trusts
//! the system's roots, or only the CA the caller gave (a private CA's registry is then
//! not trusted on a public CA's word), and presents a client certificate when one is
//! given. reqwest is built without a TLS provider of its own, so every client gets
//! this configuration, plain-HTTP ones included.
//!
//! The server crate has the same few lines for its operator commands; this crate must
//! not depend on it.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a [`crate::Registry`]'s HTTPS trusts and presents (PEM text).
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// CA certificates to trust instead of the system's roots.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// A client certificate (its chain after it) and its private key.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The client configuration for `settings`.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    // ring, not aws-lc-rs (a C build with cmake). rustls 0.23.48 deprecates ring's
    // provider for lacking post-quantum key exchange; X25519 is what it offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| err.to_string())?;
    let builder = match &settings.ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in certificates(pem, "the CA")? {
                roots
                    .add(der)
                    .map_err(|err| format!("the CA certificate: {err}"))?;
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
    let mut config = match &settings.identity {
        Some((cert, key)) => {
            let chain = certificates(cert, "the client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|err| format!("the client key is not a PEM private key: {err}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("the client certificate: {err}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{what} is not PEM: {err}"))?;
    if chain.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(chain)
}
