//! The load: the same rustls client (ring, the bench's CA) against every server, in
//! closed loops on the bench's runtime. Kept-alive connections asking again and again;
//! a new connection per request, with TLS session resumption off (every handshake a
//! full TLS 1.3 one) or on (one shared ticket store: after its first, each connection
//! resumes, and the client counts the handshakes that did); and idle connections held
//! open after one request each, for memory. Closed with `SO_LINGER` 0, so the client
//! leaves no `TIME_WAIT` behind to run out of ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::Pki;

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the client reaches a server.
#[derive(Clone)]
pub enum Target {
    /// Plain HTTP.
    Plain(SocketAddr),
    /// HTTPS, with this connector (its resumption setting included).
    Tls(SocketAddr, TlsConnector),
}

/// A client connector trusting the bench's CA; `resume` keeps tickets for the next
/// connection.
pub fn connector(pki: &Pki, resume: bool) -> anyhow::Result<TlsConnector> {
    let files = switchboard::tls::client::ClientFiles {
        ca_cert: Some(pki.ca.clone()),
        ..Default::default()
    };
    let mut config = switchboard::tls::client::client_config(&files).map_err(anyhow::Error::msg)?;
    config.resumption = if resume {
        Resumption::in_memory_sessions(1024)
    } else {
        Resumption::disabled()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What a loop phase counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counted {
    pub answers: u64,
    pub errors: u64,
    /// Handshakes the client saw resume.
    pub resumed: u64,
}

impl Counted {
    fn add(&mut self, other: Counted) {
        self.answers += other.answers;
        self.errors += other.errors;
        self.resumed += other.resumed;
    }
}

/// A connection of either kind.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects (and shakes hands): the stream and whether the handshake resumed.
pub async fn connect(target: &Target) -> anyhow::Result<(Box<dyn Io>, bool)> {
    let addr = match target {
        Target::Plain(a) | Target::Tls(a, _) => *a,
    };
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    // Linger 0: close sends a reset at once (no blocking, no TIME_WAIT); tokio's own
    // setter is deprecated for the blocking a non-zero linger causes.
    socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
    match target {
        Target::Plain(_) => Ok((Box::new(tcp), false)),
        Target::Tls(_, connector) => {
            let name = ServerName::try_from("localhost")?;
            let tls = connector
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            Ok((Box::new(tls), resumed))
        }
    }
}

/// Sends `request` and reads one answer (by its `Content-Length`); fails unless 200.
pub async fn ask(io: &mut dyn Io, request: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<()> {
    io.write_all(request).await?;
    buf.clear();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed by the server");
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("answered {}", head.lines().next().unwrap_or_default());
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no Content-Length")?;
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .context("no answer in time")?
}

/// `conns` kept-alive connections asking `request` until `window` passes.
pub async fn kept_alive(
    target: &Target,
    request: &[u8],
    conns: usize,
    window: Duration,
) -> Counted {
    closed_loops(
        target,
        request,
        conns,
        window,
        |target, request, until| async move {
            let mut counted = Counted::default();
            let mut buf = Vec::with_capacity(4096);
            let Ok((mut io, _)) = connect(&target).await else {
                counted.errors += 1;
                return counted;
            };
            while Instant::now() < until {
                match ask(io.as_mut(), &request, &mut buf).await {
                    Ok(()) => counted.answers += 1,
                    Err(_) => {
                        counted.errors += 1;
                        return counted;
                    }
                }
            }
            counted
        },
    )
    .await
}

/// `conns` loops, each a new connection per request, until `window` passes.
pub async fn per_connection(
    target: &Target,
    request: &[u8],
    conns: usize,
    window: Duration,
) -> Counted {
    closed_loops(
        target,
        request,
        conns,
        window,
        |target, request, until| async move {
            let mut counted = Counted::default();
            let mut buf = Vec::with_capacity(4096);
            while Instant::now() < until {
                let asked = async {
                    let (mut io, resumed) = connect(&target).await?;
                    ask(io.as_mut(), &request, &mut buf).await?;
                    anyhow::Ok(resumed)
                };
                match asked.await {
                    Ok(resumed) => {
                        counted.answers += 1;
                        counted.resumed += u64::from(resumed);
                    }
                    Err(_) => counted.errors += 1,
                }
            }
            counted
        },
    )
    .await
}

/// `conns` tasks of `body` (each with its own target and request, and the instant
/// to stop at), their counts summed.
async fn closed_loops<F, Fut>(
    target: &Target,
    request: &[u8],
    conns: usize,
    window: Duration,
    body: F,
) -> Counted
where
    F: Fn(Target, Vec<u8>, Instant) -> Fut,
    Fut: std::future::Future<Output = Counted> + Send + 'static,
{
    let until = Instant::now() + window;
    let mut all = Counted::default();
    let loops: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(body(target.clone(), request.to_vec(), until)))
        .collect();
    for handle in loops {
        match handle.await {
            Ok(counted) => all.add(counted),
            Err(_) => all.errors += 1,
        }
    }
    all
}

/// Opens `n` connections, asks once on each, and keeps them (idle) for the caller.
pub async fn hold(target: &Target, request: &[u8], n: usize) -> anyhow::Result<Vec<Box<dyn Io>>> {
    let mut held = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(4096);
    for i in 0..n {
        let (mut io, _) = connect(target)
            .await
            .with_context(|| format!("connection {i}"))?;
        ask(io.as_mut(), request, &mut buf)
            .await
            .with_context(|| format!("request on connection {i}"))?;
        held.push(io);
    }
    Ok(held)
}

/// Until `target` answers `request` (a starting server), for 10 s at most.
pub async fn wait_answering(target: &Target, request: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    loop {
        let tried = async {
            let (mut io, _) = connect(target).await?;
            ask(io.as_mut(), request, &mut buf).await
        };
        match tried.await {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() > deadline => return Err(err.context("never answered")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
