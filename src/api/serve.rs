//! Serves the router on accepted TCP connections with the limits of SPEC section 6,
//! so idle or slow clients cannot hold the API down: request headers must arrive
//! within the header timeout, a keep-alive connection idle for the idle timeout is
//! closed, at most `max_connections` are open (beyond that new ones wait in the
//! kernel's backlog: the permit is taken before `accept`), and failed accepts back
//! off instead of spinning.
//!
//! With `[tls]` each connection is a TLS handshake first (`crate::tls`), which must
//! finish within the header timeout and holds a connection permit meanwhile, so
//! clients that open connections and never finish a handshake cannot hold the API.
//!
//! Owns the HTTP/1 connection handling: each connection starts on the hand-written
//! path of the hot routes (`fast/`, unless [`HttpLimits::fast_path`] is off), which
//! hands it to hyper here at its first other request. Knows nothing of the endpoints.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::Peer;
use super::service::Api;
use crate::tls::{HandshakeFailed, ServerTls};

/// The limits of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request headers must arrive within this.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections are open at once.
    pub max_connections: usize,
    /// Answer the hot routes on the hand-written path (`fast/`); off, every request
    /// goes through hyper and axum (tests compare the two).
    pub fast_path: bool,
}

/// Accepts and serves until `shutdown` fires; then stops accepting, lets each
/// connection finish its request in flight (blocking queries answer at once), and
/// returns when the last one closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    limits: HttpLimits,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    // hyper's own header timer also runs while a keep-alive connection waits for its
    // next request, which would close idle connections after the header timeout
    // instead of the idle timeout (and hand pooling clients stale connections). The
    // header timeout is kept here instead, from the first byte of a request.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let mut backoff = crate::backoff::AcceptBackoff::default();
    let stopped = shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        // The permit first: beyond the limit, connections wait in the backlog.
        let permit = tokio::select! {
            () = &mut stopped => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let Some((stream, peer)) = backoff.accept(&listener, &mut stopped, "http").await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            http.clone(),
            stream,
            peer,
            api.clone(),
            limits,
            tls.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// What a connection's watchdog reads: requests in flight, when the last one ended,
/// and since when the bytes of a request whose headers are not complete yet have been
/// arriving. Atomics, as nanoseconds since the connection began: the socket wrapper and
/// the requests write them on every request, and a lock there cost more than the rest
/// of the watchdog.
#[derive(Debug)]
struct Activity {
    began: Instant,
    in_flight: AtomicUsize,
    last: AtomicU64,
    /// [`NOT_STARTED`] while no request's headers are being read.
    headers_since: AtomicU64,
}

/// `headers_since` when no request has started.
const NOT_STARTED: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            began: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            headers_since: AtomicU64::new(NOT_STARTED),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(NOT_STARTED - 1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.began + Duration::from_nanos(nanos)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        // The headers are complete: hyper handed the request over.
        self.headers_since.store(NOT_STARTED, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Bytes arrived: with no request in flight they start a request's headers.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.headers_since.load(Ordering::Relaxed) == NOT_STARTED
        {
            self.headers_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// When the headers being read must be complete, if a request has started.
    fn headers_due(&self, timeout: Duration) -> Option<Instant> {
        match self.headers_since.load(Ordering::Relaxed) {
            NOT_STARTED => None,
            since => Some(self.at(since) + timeout),
        }
    }

    /// When the connection will have been idle for `idle`, if no request is in
    /// flight and nothing starts.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.at(self.last.load(Ordering::Relaxed)) + idle)
    }
}

/// One request in flight; its end (even a cancelled one) counts as activity.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection (after its TLS handshake, with `[tls]`), holding
/// its permit until it closes.
#[allow(clippy::too_many_arguments)]
async fn connection(
    http: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    api: Api,
    limits: HttpLimits,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let Some(tls) = tls else {
        return http_connection(http, stream, Peer::plain(peer), api, limits, shutdown).await;
    };
    // In a block of its own: the TLS stream's binding ends before the connection's
    // long await, so the task keeps no slot for it beside the boxed connection.
    let served = {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            // Boxed: the handshake's state is freed once it is done.
            done = Box::pin(tls.accept(stream, limits.header_timeout)) => match done {
                Ok(stream) => stream,
                Err(HandshakeFailed::Timeout) => {
                    tracing::debug!(%peer, "tls handshake not done within the header timeout; closing");
                    return;
                }
                Err(HandshakeFailed::Refused(err)) => {
                    tracing::debug!(%peer, %err, "tls handshake refused");
                    return;
                }
            },
        };
        let peer = Peer {
            addr: peer,
            client_cert: crate::tls::has_verified_client_cert(&stream),
        };
        http_connection(http, stream, peer, api, limits, shutdown)
    };
    served.await;
}

/// HTTP/1 on a connection: the fast path first, unless it is off. A plain function
/// returning the connection's future boxed, with the socket moved straight into it:
/// an async function here would keep a slot for the socket (a TLS stream is over a
/// KiB) in every connection's task beside the one in the box, and a task is as large
/// as the largest state of its future for as long as the connection lives.
fn http_connection<S>(
    http: http1::Builder,
    stream: S,
    peer: Peer,
    api: Api,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + super::fast::ReadReady
        + Unpin
        + Send
        + 'static,
{
    if limits.fast_path {
        Box::pin(super::fast::connection(
            stream, peer, http, api, limits, shutdown,
        ))
    } else {
        Box::pin(hyper_connection(http, stream, peer, api, limits, shutdown))
    }
}

/// Serves a connection with hyper until it closes, its idle timeout passes, or
/// shutdown.
///
/// One timer watches both deadlines and is moved only when a deadline comes earlier
/// than it (headers still incomplete when a poll ends): a request answered within one
/// poll, the usual case, touches no timer. When the timer fires early (activity
/// pushed the deadline later) it is set again, once per idle period.
pub(super) async fn hyper_connection<S>(
    http: http1::Builder,
    stream: S,
    peer: Peer,
    api: Api,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle = limits.idle_timeout;
    let activity = Arc::new(Activity::new());
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // The peer, for per-source limits, logs and client certificates.
        request.extensions_mut().insert(ConnectInfo(peer.addr));
        request.extensions_mut().insert(peer);
        let in_flight = requests.begin();
        let api = api.clone();
        async move {
            let response = api.call(request.map(axum::body::Body::new)).await;
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let watched = Watched {
        stream,
        activity: Arc::clone(&activity),
    };
    let conn = http.serve_connection(TokioIo::new(watched), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = std::pin::pin!(shutdown.cancelled());
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    let mut closing = false;
    std::future::poll_fn(|cx| {
        // Bounded: a pass that does not return sets `closing` (once) or sets the
        // timer to a deadline after now.
        loop {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                if let Err(err) = done {
                    tracing::debug!(peer = %peer.addr, %err, "http connection ended with an error");
                }
                return Poll::Ready(());
            }
            if !closing && stopping.as_mut().poll(cx).is_ready() {
                conn.as_mut().graceful_shutdown();
                closing = true;
                continue;
            }
            let headers_due = activity.headers_due(limits.header_timeout);
            if let Some(due) = headers_due.filter(|due| *due < timer.deadline()) {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if headers_due.is_some_and(|due| due <= now) {
                // A request that never completes its headers: dropped, not answered
                // (slow-loris).
                tracing::debug!(peer = %peer.addr, "request headers not complete in time; closing");
                return Poll::Ready(());
            }
            let next = match activity.idle_at(idle) {
                Some(at) if at <= now => {
                    if !closing {
                        tracing::debug!(peer = %peer.addr, ?idle, "idle http connection closed");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    now + idle
                }
                Some(at) => at,
                // Busy: look again one idle period from now.
                None => now + idle,
            };
            timer
                .as_mut()
                .reset(headers_due.map_or(next, |due| due.min(next)));
        }
    })
    .await;
}

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut me.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
