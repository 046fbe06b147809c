//! The hand-written HTTP/1.1 path of the three hot routes (`GET /healthz`,
//! `GET /servers`, a heartbeat's `PUT`): a connection's bytes are read here, each
//! simple request for one of them (`head.rs` decides) is answered inline by the same
//! core its axum handler calls, through the same envelope ([`Api::finish`]), and the
//! connection loops for the next one, pipelined or not. The first request that is
//! anything else hands the connection, with the bytes already read ([`Rewind`]), to
//! hyper for the rest of its life (`serve.rs`). hyper's HTTP/1 machinery, axum's
//! routing and extractors were most of a hot request's cost (issue 21).
//!
//! Keeps what `serve.rs` keeps for hyper: the header timeout (from a head's first
//! byte), the idle timeout, graceful shutdown (a request in flight finishes and says
//! `close`), `Connection` and HTTP/1.0 keep-alive rules, and a write that does not
//! finish within the idle timeout closes the connection.
//!
//! Owns a connection's bytes until the hand-off; must not hold an endpoint's logic
//! (the cores in `ops.rs`, `servers.rs` and `instances.rs` answer) nor answer
//! anything hyper answers. Generic over the socket, so TLS can come in front.

pub mod head;
pub mod reply;
pub mod rewind;

use std::future::Future;
use std::task::Poll;

use axum::http::{HeaderValue, Method, StatusCode};
use hyper::server::conn::http1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::answer::Answer;
use super::auth::{Meta, Peer};
use super::serve::HttpLimits;
use super::service::Api;
use head::{Head, Parsed, Route};
use rewind::Rewind;

/// A request's first buffer (allocated when its first byte can be read); it grows
/// for a long head or a body.
const INITIAL_BUFFER: usize = 2048;

/// Read at least this much at a time while a head is incomplete.
const READ_CHUNK: usize = 2048;

/// Serves one connection: hot requests here, then hyper from the first other one.
pub(super) async fn connection<S>(
    mut io: S,
    peer: Peer,
    http: http1::Builder,
    api: Api,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let mut conn = Conn {
        buf: Buffer::new(),
        out: Vec::new(),
        peer,
        api: &api,
        limits,
        shutdown: &shutdown,
    };
    if let End::HandOff = conn.serve(&mut io).await {
        // Boxed, and built in a block of its own: hyper's connection is a few KiB,
        // and a binding of the socket left in scope would keep a slot for it in this
        // future, which every idle fast-path connection carries.
        let handed = {
            let unread = conn.buf.data().to_vec();
            let rewound = Rewind::new(unread, io);
            Box::pin(super::serve::hyper_connection(
                http, rewound, peer, api, limits, shutdown,
            ))
        };
        handed.await;
    }
}

/// A socket the fast path can wait on with no buffer: between requests an idle
/// connection holds neither a read nor a write buffer (as nginx frees a keep-alive
/// connection's buffers), and allocates one when its next request can be read.
pub trait ReadReady {
    /// Ready when a read would not wait (data, the end, or an error to report).
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        // Records already read may hold plaintext (or an alert the read will report).
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
                tcp.poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// How the fast path ended.
enum End {
    /// The connection is done (closed by either side, timed out, shutdown).
    Closed,
    /// hyper takes it from the first unread byte.
    HandOff,
}

/// What one answered request leaves.
enum Step {
    KeepAlive,
    Close,
    /// A header value the fast path will not take: hyper answers this request.
    HandOff,
}

struct Conn<'a> {
    buf: Buffer,
    /// Answers not written yet (pipelined requests are written together).
    out: Vec<u8>,
    peer: Peer,
    api: &'a Api,
    limits: HttpLimits,
    shutdown: &'a CancellationToken,
}

impl Conn<'_> {
    async fn serve<S: AsyncRead + AsyncWrite + ReadReady + Unpin>(&mut self, io: &mut S) -> End {
        let idle = self.limits.idle_timeout;
        let mut stopping = std::pin::pin!(self.shutdown.cancelled());
        // One timer for every deadline, moved only when a deadline comes earlier than
        // it or when it fires early: a request answered at once touches no timer.
        let mut timer = std::pin::pin!(tokio::time::sleep(idle));
        let mut last = Instant::now();
        let mut read_at = last;
        // When the first byte of the head being read arrived.
        let mut head_since: Option<Instant> = None;
        // When the head whose body is still arriving was complete.
        let mut body_since: Option<Instant> = None;
        loop {
            let mut missing = 0;
            let mut answered = false;
            loop {
                let data = self.buf.data();
                if data.is_empty() {
                    break;
                }
                let head = match head::parse(data) {
                    Parsed::Partial => break,
                    Parsed::HandOff => return self.hand_off(io).await,
                    Parsed::Hot(head) => head,
                };
                let total = head.len + head.body_len;
                if data.len() < total {
                    missing = total - data.len();
                    body_since.get_or_insert(read_at);
                    break;
                }
                let body = &data[head.len..total];
                let step = answer(
                    self.api,
                    self.peer,
                    self.shutdown,
                    &mut self.out,
                    &head,
                    body,
                );
                match step.await {
                    Step::KeepAlive => {}
                    Step::Close => {
                        if self.flush(io).await {
                            let _ = tokio::time::timeout(idle, io.shutdown()).await;
                        }
                        return End::Closed;
                    }
                    Step::HandOff => return self.hand_off(io).await,
                }
                self.buf.consume(total);
                body_since = None;
                answered = true;
            }
            if !self.out.is_empty() && !self.flush(io).await {
                return End::Closed;
            }
            if answered {
                last = Instant::now();
                // What is left came with the last read.
                head_since = (!self.buf.data().is_empty()).then_some(read_at);
            }
            let deadline = match (body_since, head_since) {
                (Some(since), _) => since + super::REQUEST_TIMEOUT,
                (None, Some(since)) => since + self.limits.header_timeout,
                (None, None) => last + idle,
            };
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            let was_empty = self.buf.data().is_empty();
            if was_empty {
                // Idle until the next request: no buffer held meanwhile.
                self.buf.release();
                self.out = Vec::new();
            }
            let want = missing.max(READ_CHUNK);
            let buf = &mut self.buf;
            let read = async {
                if was_empty {
                    std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
                }
                io.read(buf.spare(want)).await
            };
            tokio::select! {
                biased;
                read = read => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(n) => {
                        self.buf.filled(n);
                        read_at = Instant::now();
                        if was_empty {
                            head_since = Some(read_at);
                        }
                    }
                },
                // hyper closes a connection at once unless a request is in flight (a
                // body arriving); that one finishes and says `close`.
                () = &mut stopping, if body_since.is_none() => return End::Closed,
                () = &mut timer => {
                    let now = Instant::now();
                    if deadline <= now {
                        if body_since.is_some() {
                            tracing::debug!(peer = %self.peer.addr, "request body not complete in time; closing");
                        } else if head_since.is_some() {
                            tracing::debug!(peer = %self.peer.addr, "request headers not complete in time; closing");
                        } else {
                            tracing::debug!(peer = %self.peer.addr, ?idle, "idle http connection closed");
                        }
                        return End::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Writes what is answered, then lets hyper have the connection.
    async fn hand_off<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> End {
        if self.out.is_empty() || self.flush(io).await {
            End::HandOff
        } else {
            End::Closed
        }
    }

    /// Writes `out` within the idle timeout; false when the connection is lost.
    async fn flush<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> bool {
        let out = std::mem::take(&mut self.out);
        let written = async {
            io.write_all(&out).await?;
            io.flush().await
        };
        let ok = matches!(
            within(self.limits.idle_timeout, written).await,
            Some(Ok(()))
        );
        self.out = out;
        self.out.clear();
        ok
    }
}

/// Answers one hot request into `out` through its route's core and the envelope.
async fn answer(
    api: &Api,
    peer: Peer,
    shutdown: &CancellationToken,
    out: &mut Vec<u8>,
    head: &Head<'_>,
    body: &[u8],
) -> Step {
    let started = std::time::Instant::now();
    let hot = api.hot();
    let state = api.state();
    let method = match head.route {
        Route::Heartbeat { .. } => Method::PUT,
        _ => Method::GET,
    };
    // Disabled below debug, as the envelope's: then it costs a level check.
    let span = tracing::debug_span!("request", %method, uri = %head.target);
    let (index, answer) = match head.route {
        Route::Healthz => (hot.healthz, super::ops::healthz_answer()),
        Route::Servers(query) => {
            let (Some(authorization), Some(accept)) =
                (value(head.authorization), value(head.accept))
            else {
                return Step::HandOff;
            };
            let meta = Meta::new(authorization, None, accept.as_ref(), Some(peer));
            // Boxed: the ranking's future (blocking queries included) is a few KiB
            // that every idle connection's task would carry otherwise.
            let ranked = Box::pin(super::servers::answer(state, query, &meta).instrument(span));
            let answer = within(super::REQUEST_TIMEOUT, ranked)
                .await
                .unwrap_or_else(|| Answer::empty(StatusCode::SERVICE_UNAVAILABLE));
            (hot.servers, answer)
        }
        Route::Heartbeat { service, id } => {
            let Some(lease) = value(head.lease) else {
                return Step::HandOff;
            };
            let meta = Meta::new(None, lease, None, Some(peer));
            let answer = span
                .in_scope(|| super::instances::heartbeat_answer(state, service, id, &meta, body));
            (hot.heartbeat, answer)
        }
    };
    api.finish(index, &method, answer.status, started.elapsed());
    // hyper's graceful shutdown lets the request in flight finish, and says `close`.
    let keep_alive = head.keep_alive && !shutdown.is_cancelled();
    let framing = reply::Framing {
        http10: head.http10,
        keep_alive,
    };
    reply::write(out, &answer, framing);
    if keep_alive {
        Step::KeepAlive
    } else {
        Step::Close
    }
}

/// A header value as hyper hands it to axum: `Some(None)` when absent, `None` when
/// it is not a valid value (then hyper answers).
fn value(raw: Option<&[u8]>) -> Option<Option<HeaderValue>> {
    match raw {
        None => Some(None),
        Some(raw) => HeaderValue::from_bytes(raw).ok().map(Some),
    }
}

/// `future`'s output, or `None` if it takes longer than `limit`. Polled once before
/// any timer is made: the usual answer is ready at once, and a timer per request
/// was what the envelope's design avoids.
async fn within<F: Future>(limit: std::time::Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Some(output),
        Poll::Pending => tokio::time::timeout(limit, future).await.ok(),
    }
}

/// A connection's read buffer: the unread bytes are `bytes[start..end]`.
struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Self {
        // Allocated by `spare` when the first request can be read.
        Buffer {
            bytes: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Frees the memory of an empty buffer (`spare` allocates again).
    fn release(&mut self) {
        if self.start == self.end {
            self.bytes = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `want` more bytes: the unread ones moved to the front, the
    /// buffer grown if that is not enough (bounded: a head is at most
    /// `head::MAX_HEAD` and a body `BODY_LIMIT` before the fast path lets go).
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.bytes.is_empty() {
            self.bytes = vec![0; want.max(INITIAL_BUFFER)];
        }
        if self.bytes.len() - self.end < want {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.bytes.len() - self.end < want {
                self.bytes.resize(self.end + want, 0);
            }
        }
        &mut self.bytes[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.bytes.len());
    }
}
