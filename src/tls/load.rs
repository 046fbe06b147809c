//! PEM files into a rustls server configuration (SPEC 9): the certificate chain, its
//! private key (which must match the certificate), the client CA and how client
//! certificates are asked for; the facts about the served certificate (expiry,
//! serial, subject) for the metric and the log. Every failure names the key whose
//! file is at fault, so `switchboard check` and a refused reload say which to fix.
//!
//! Pure but for reading the files; must not touch sockets or swap anything.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::settings::{ClientAuth, TlsConfig};

/// A TLS file that cannot be used; `key` is the configuration key naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}: {message}")]
pub struct TlsError {
    /// `tls.cert`, `tls.key` or `tls.client_ca` (or a forward listener's key).
    pub key: String,
    /// What is wrong, with the file's path.
    pub message: String,
}

impl TlsError {
    fn new(key: &str, path: &Path, message: impl std::fmt::Display) -> Self {
        TlsError {
            key: key.to_owned(),
            message: format!("{}: {message}", path.display()),
        }
    }
}

/// What the log and the expiry metric say about the served certificate (the first
/// of the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The serial number, hex bytes joined by `:` as `openssl x509 -serial` groups
    /// them (without its `serial=` prefix, upper case).
    pub serial: String,
    /// The subject, RFC 4514 order as x509-parser prints it.
    pub subject: String,
}

/// A loaded server configuration and the facts of its certificate.
#[derive(Debug)]
pub struct Loaded {
    /// Ready for an acceptor.
    pub server: ServerConfig,
    /// The served certificate's facts.
    pub cert: CertFacts,
}

/// The cryptography every TLS configuration here uses: ring (the provider reqwest's
/// build already links; aws-lc-rs would add a C and assembly build of its own, with
/// cmake). rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
/// exchange (X25519MLKEM768): our key exchange is X25519 (then P-256, P-384), as
/// nginx 1.22 on OpenSSL 3.0 offers.
pub fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `config`'s files into a server configuration offering `alpn` (in order of
/// preference) and issuing session tickets with `ticketer`, refusing a certificate
/// that expired before `now_unix`.
///
/// # Errors
/// [`TlsError`] naming the key of the file at fault: missing or unreadable, not PEM,
/// no certificate or key in it, a key that does not match the certificate, an
/// expired certificate, a client CA rustls cannot use.
pub fn server_config(
    config: &TlsConfig,
    alpn: &[Vec<u8>],
    ticketer: Arc<dyn ProducesTickets>,
    now_unix: i64,
) -> Result<Loaded, TlsError> {
    let (cert_key, key_key, ca_key) = (
        config.key_name("cert"),
        config.key_name("key"),
        config.key_name("client_ca"),
    );
    let chain = certificates(&cert_key, &config.cert)?;
    let cert = facts(&cert_key, &config.cert, &chain[0])?;
    if cert.not_after < now_unix {
        return Err(TlsError::new(
            &cert_key,
            &config.cert,
            format!(
                "the certificate (serial {}) expired at {} (UTC)",
                cert.serial,
                unix_to_rfc3339(cert.not_after)
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|err| {
        TlsError::new(
            &key_key,
            &config.key,
            pem_problem(&err, "a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::new(&cert_key, &config.cert, err))?;
    let builder = match (&config.client_ca, config.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let mut roots = RootCertStore::empty();
            for der in certificates(&ca_key, ca)? {
                roots
                    .add(der)
                    .map_err(|err| TlsError::new(&ca_key, ca, err))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|err| TlsError::new(&ca_key, ca, err))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|err| {
        TlsError::new(
            &key_key,
            &config.key,
            format!(
                "cannot serve it with the certificate of {cert_key} ({}): {err}",
                config.cert.display()
            ),
        )
    })?;
    server.alpn_protocols = alpn.to_vec();
    server.ticketer = ticketer;
    // One ticket per full handshake: a client resumes with one, and each costs an
    // encryption and a record.
    server.send_tls13_tickets = 1;
    Ok(Loaded { server, cert })
}

/// Every certificate of a PEM file, in order; at least one.
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|err| TlsError::new(key, path, pem_problem(&err, "PEM certificates")))?;
    let chain = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::new(key, path, pem_problem(&err, "PEM certificates")))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

/// The facts of one certificate.
fn facts(key: &str, path: &Path, der: &CertificateDer<'_>) -> Result<CertFacts, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|err| TlsError::new(key, path, format!("not an X.509 certificate: {err}")))?;
    Ok(CertFacts {
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.raw_serial_as_string().to_uppercase(),
        subject: cert.subject().to_string(),
    })
}

/// What a PEM reading error means to an operator.
fn pem_problem(err: &rustls_pki_types::pem::Error, expected: &str) -> String {
    match err {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls_pki_types::pem::Error::NoItemsFound => format!("holds no {expected}"),
        other => format!("not {expected}: {other}"),
    }
}

/// `2027-01-31T12:00:00Z` for Unix seconds (clamped at the epoch).
pub fn unix_to_rfc3339(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}
