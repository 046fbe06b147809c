//! TLS (SPEC 9): the validated `[tls]` settings (`settings.rs`), PEM files into rustls
//! configurations (`load.rs`), the server side a
//! listener accepts with ([`ServerTls`]: the running configuration, swapped whole on
//! reload so new connections get the new certificate while open ones keep theirs;
//! the handshake under a deadline, counted), and the client side the operator commands
//! and the tests connect with (`client.rs`).
//!
//! Owns no socket beyond the handshake and nothing of HTTP; the caller bounds how many
//! handshakes run at once (the API's connection permits).

pub mod client;
pub mod load;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::ProducesTickets;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use load::{CertFacts, TlsError};
pub use settings::{ClientAuth, TlsConfig};

/// The API's ALPN: HTTP/1.1 only (the API serves no HTTP/2).
pub const API_ALPN: &[&[u8]] = &[b"http/1.1"];

/// A listener's TLS: the configuration new connections are accepted with.
pub struct ServerTls {
    /// The `listener` label of its metrics (`http` for the API).
    listener: &'static str,
    alpn: &'static [&'static [u8]],
    /// Kept across reloads: tickets issued before a rotation still resume after it.
    ticketer: Arc<dyn ProducesTickets>,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// How a handshake ended when it did not give a connection.
#[derive(Debug)]
pub enum HandshakeFailed {
    /// Not done within the deadline.
    Timeout,
    /// Refused (a bad hello, no shared protocol, a certificate that did not verify),
    /// or the peer closed.
    Refused(std::io::Error),
}

impl ServerTls {
    /// Loads `config`'s files for `listener`, offering `alpn`.
    ///
    /// # Errors
    /// [`TlsError`] naming the key of the file at fault.
    pub fn load(
        config: &TlsConfig,
        listener: &'static str,
        alpn: &'static [&'static [u8]],
    ) -> Result<ServerTls, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|err| TlsError {
            key: "tls".into(),
            message: format!("cannot make a session ticket key: {err}"),
        })?;
        let loaded = load::server_config(config, alpn, Arc::clone(&ticketer), now_unix())?;
        log_loaded(listener, &loaded.cert, "serving");
        Ok(ServerTls {
            listener,
            alpn,
            ticketer,
            current: ArcSwap::from_pointee(loaded.server),
        })
    }

    /// Reads `config`'s files again; on success new connections get them. On failure
    /// nothing changes (the error says which file is at fault).
    ///
    /// # Errors
    /// [`TlsError`] naming the key of the file at fault.
    pub fn reload(&self, config: &TlsConfig) -> Result<CertFacts, TlsError> {
        let loaded =
            load::server_config(config, self.alpn, Arc::clone(&self.ticketer), now_unix())?;
        self.current.store(Arc::new(loaded.server));
        log_loaded(self.listener, &loaded.cert, "reloaded");
        Ok(loaded.cert)
    }

    /// The TLS handshake on an accepted socket, within `deadline`. Counts the result.
    ///
    /// # Errors
    /// [`HandshakeFailed`] when it timed out or was refused.
    pub async fn accept<S>(
        &self,
        stream: S,
        deadline: Duration,
    ) -> Result<TlsStream<S>, HandshakeFailed>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let result = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(HandshakeFailed::Refused(err)),
            Err(_) => Err(HandshakeFailed::Timeout),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(HandshakeFailed::Refused(_)) => "failed",
            Err(HandshakeFailed::Timeout) => "timeout",
        };
        metrics::counter!(crate::metrics::TLS_HANDSHAKES, "listener" => self.listener, "result" => outcome)
            .increment(1);
        result
    }
}

/// Whether a connection's peer presented a client certificate that verified (rustls
/// keeps one only then).
pub fn has_verified_client_cert<S>(stream: &TlsStream<S>) -> bool {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|chain| !chain.is_empty())
}

/// Logs what is served and sets the expiry gauge; warns when it expires within 14 days.
fn log_loaded(listener: &'static str, cert: &CertFacts, what: &str) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY, "listener" => listener)
        .set(cert.not_after as f64);
    let expires = load::unix_to_rfc3339(cert.not_after);
    tracing::info!(listener, serial = %cert.serial, subject = %cert.subject, %expires, "tls: {what} a certificate");
    let left = cert.not_after - now_unix();
    if left < 14 * 86_400 {
        tracing::warn!(listener, serial = %cert.serial, %expires, days_left = left / 86_400, "tls: the certificate expires soon; replace the file and send SIGHUP");
    }
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
