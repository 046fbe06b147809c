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
pub fn api_alpn() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec()]
}

/// A listener's TLS: the configuration new connections are accepted with.
pub struct ServerTls {
    /// The `listener` label of its metrics (`http` for the API, the listen address
    /// for a forward listener).
    listener: String,
    alpn: Vec<Vec<u8>>,
    /// Handshakes by result: ok, failed, timeout (made once, not per handshake).
    handshakes: [metrics::Counter; 3],
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
        listener: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<ServerTls, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|err| TlsError {
            key: config.key_name("cert"),
            message: format!("cannot make a session ticket key: {err}"),
        })?;
        let loaded = load::server_config(config, &alpn, Arc::clone(&ticketer), now_unix())?;
        log_loaded(listener, &loaded.cert, "serving");
        let handshakes = ["ok", "failed", "timeout"].map(|result| {
            metrics::counter!(crate::metrics::TLS_HANDSHAKES, "listener" => listener.to_owned(), "result" => result)
        });
        Ok(ServerTls {
            listener: listener.to_owned(),
            alpn,
            handshakes,
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
            load::server_config(config, &self.alpn, Arc::clone(&self.ticketer), now_unix())?;
        self.current.store(Arc::new(loaded.server));
        log_loaded(&self.listener, &loaded.cert, "reloaded");
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
            Ok(_) => 0,
            Err(HandshakeFailed::Refused(_)) => 1,
            Err(HandshakeFailed::Timeout) => 2,
        };
        self.handshakes[outcome].increment(1);
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

/// What a backend is told of a terminated TLS connection (PROXY v2's TLVs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// `TLSv1.3` or `TLSv1.2`, as OpenSSL names them.
    pub version: String,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The verified client certificate's subject CN; `None` without a verified one.
    pub client_cn: Option<String>,
    /// Whether a client certificate was presented and verified.
    pub client_verified: bool,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

/// The facts of an established server connection.
pub fn session_facts(conn: &rustls::ServerConnection) -> SessionFacts {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    let leaf = conn.peer_certificates().and_then(|chain| chain.first());
    let client_cn = leaf.and_then(|der| {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let cn = cert.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    });
    SessionFacts {
        version: version.to_owned(),
        server_name: conn.server_name().map(str::to_owned),
        client_cn,
        client_verified: leaf.is_some(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    }
}

/// Logs what is served and sets the expiry gauge; warns when it expires within 14 days.
fn log_loaded(listener: &str, cert: &CertFacts, what: &str) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY, "listener" => listener.to_owned())
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
