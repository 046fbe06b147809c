//! Opening a device's stream before its backend is chosen (SPEC 9): the TLS handshake
//! of a terminating listener, the ClientHello an SNI-routing listener picks the service
//! by, and the MQTT CONNECT whose client id is the affinity key of `hash =
//! "mqtt_client_id"`. Each within `tls_handshake_timeout_ms` and a byte bound, each
//! counted by result. The bytes read come back with the stream, for the backend.
//!
//! A listener with none of these passes the socket through untouched. Must not choose
//! or connect a backend (`connect.rs` does).

use std::net::SocketAddr;

use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::hello::{self, Hello, MAX_HELLO_PEEK};
use super::mqtt::{self, Connect, MAX_CONNECT_PEEK};
use super::peek::{self, PeekError, Verdict};
use super::stats::{ListenerStats, MqttResult, SniResult};
use crate::config::{ForwardConfig, ForwardHash, SniMatch};
use crate::tls::{HandshakeFailed, ServerTls, SessionFacts};

/// The device's end of a relayed connection.
#[derive(Debug)]
pub enum Device {
    /// The TCP socket itself (plain, or TLS passed through).
    Plain(TcpStream),
    /// TLS terminated here: plaintext is relayed. Boxed: rustls' connection is large,
    /// and plain connections should not pay for its size.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Device {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Device::Plain(tcp) => tcp,
            Device::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// A device's stream, opened: where it goes and what to tell the backend first.
#[derive(Debug)]
pub struct Opened<'a> {
    /// The stream.
    pub device: Device,
    /// Bytes already read from it (the ClientHello, the CONNECT), for the backend
    /// before anything else.
    pub prefix: Vec<u8>,
    /// The service to forward to.
    pub service: &'a str,
    /// The affinity key, if any.
    pub key: Option<Vec<u8>>,
    /// The server name of a ClientHello passed through (for PROXY v2's authority).
    pub server_name: Option<String>,
    /// What the TLS handshake settled (for PROXY v2's TLVs).
    pub tls: Option<SessionFacts>,
}

/// Whether `config` reads nothing off a device before choosing its backend: such a
/// listener opens with [`plain`], with no future of its own to allocate.
pub fn reads_nothing(config: &ForwardConfig) -> bool {
    config.edge.tls.is_none()
        && config.edge.sni_routes.is_none()
        && config.hash != ForwardHash::MqttClientId
}

/// [`open`] for a listener that [`reads_nothing`]: the socket as it is, keyed by the
/// device's address under `hash = "remote_addr"`.
pub fn plain(device: TcpStream, peer: SocketAddr, config: &ForwardConfig) -> Opened<'_> {
    unread(Device::Plain(device), peer, config)
}

/// `device` before anything is read off it: the listener's service, and the device's
/// address as the key under `hash = "remote_addr"`.
fn unread(device: Device, peer: SocketAddr, config: &ForwardConfig) -> Opened<'_> {
    Opened {
        device,
        prefix: Vec::new(),
        service: &config.service,
        key: (config.hash == ForwardHash::RemoteAddr).then(|| peer.ip().to_string().into_bytes()),
        server_name: None,
        tls: None,
    }
}

/// Opens `device` as `config` says; `None` when it is closed instead (a failed
/// handshake, a refused or malformed hello or CONNECT, a deadline passed: counted).
pub async fn open<'a>(
    device: TcpStream,
    peer: SocketAddr,
    config: &'a ForwardConfig,
    tls: Option<&ServerTls>,
    stats: &ListenerStats,
) -> Option<Opened<'a>> {
    let timeout = config.edge.handshake_timeout;
    let mut opened = match tls {
        None => unread(Device::Plain(device), peer, config),
        Some(tls) => {
            let shaken = tls.accept(device, timeout).await;
            stats.handshake(shaken.as_ref().err());
            match shaken {
                Ok(stream) => {
                    let facts = crate::tls::session_facts(stream.get_ref().1);
                    let mut opened = unread(Device::Tls(Box::new(stream)), peer, config);
                    opened.tls = Some(facts);
                    opened
                }
                Err(HandshakeFailed::Timeout) => {
                    tracing::debug!(%peer, ?timeout, "TLS handshake not done in time: closed");
                    return None;
                }
                Err(HandshakeFailed::Refused(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed: closed");
                    return None;
                }
            }
        }
    };
    if let Some(routes) = &config.edge.sni_routes {
        let Device::Plain(tcp) = &mut opened.device else {
            unreachable!("SNI routing never terminates")
        };
        let read = peek::read_until(tcp, MAX_HELLO_PEEK, Instant::now() + timeout, |bytes| {
            match hello::server_name(bytes) {
                Hello::NeedMore => Verdict::NeedMore,
                Hello::ServerName(name) => Verdict::Done(name),
                Hello::Malformed(why) => Verdict::Malformed(why),
            }
        })
        .await;
        let (name, bytes) = match read {
            Ok(found) => found,
            Err(err) => {
                stats.sni(match err {
                    PeekError::Timeout => SniResult::Timeout,
                    PeekError::Malformed(_) | PeekError::Closed => SniResult::Malformed,
                });
                tracing::debug!(%peer, ?err, "no ClientHello to route by: closed");
                return None;
            }
        };
        match routes.route(name.as_deref()) {
            SniMatch::Route(service) => {
                stats.sni(SniResult::Routed);
                opened.service = service;
            }
            SniMatch::Fallback(service) => {
                stats.sni(SniResult::Default);
                opened.service = service;
            }
            SniMatch::Refused => {
                stats.sni(SniResult::Refused);
                tracing::debug!(%peer, server_name = ?name, "no SNI route for the server name: closed");
                return None;
            }
        }
        opened.prefix = bytes;
        opened.server_name = name;
    }
    if config.hash == ForwardHash::MqttClientId {
        let deadline = Instant::now() + timeout;
        let read = match &mut opened.device {
            Device::Plain(tcp) => read_connect(tcp, deadline).await,
            Device::Tls(tls) => read_connect(&mut **tls, deadline).await,
        };
        let (id, bytes) = match read {
            Ok(found) => found,
            Err(err) => {
                stats.mqtt(match err {
                    PeekError::Timeout => MqttResult::Timeout,
                    PeekError::Malformed(_) | PeekError::Closed => MqttResult::Malformed,
                });
                tracing::debug!(%peer, ?err, "no MQTT CONNECT to hash: closed");
                return None;
            }
        };
        if id.is_empty() {
            // The broker assigns an id: no session to return to, so the ranking.
            stats.mqtt(MqttResult::Empty);
        } else {
            stats.mqtt(MqttResult::Keyed);
            opened.key = Some(id);
        }
        opened.prefix = bytes;
    }
    Some(opened)
}

async fn read_connect<R>(device: &mut R, deadline: Instant) -> Result<(Vec<u8>, Vec<u8>), PeekError>
where
    R: AsyncRead + Unpin,
{
    peek::read_until(
        device,
        MAX_CONNECT_PEEK,
        deadline,
        |bytes| match mqtt::client_id(bytes) {
            Connect::NeedMore => Verdict::NeedMore,
            Connect::ClientId(id) => Verdict::Done(id),
            Connect::Malformed(why) => Verdict::Malformed(why.to_owned()),
        },
    )
    .await
}
