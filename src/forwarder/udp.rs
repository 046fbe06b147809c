//! One UDP forward listener (nginx's `listen ... udp`): each client address is a
//! session bound to one backend chosen by the registry's ranking, with its own
//! connected socket to that backend; datagrams relay both ways. A session ends after
//! `idle_timeout` without traffic, after `udp_responses` datagrams came back, when the
//! backend refuses (ICMP port unreachable), or when evicted from the bounded table.
//! Sessions count as the instance's forwarded connections while they last, and each
//! holds one descriptor of the fd budget: when the budget is full the socket's table
//! frees a place as at its own cap, and with none to free the client gets no session
//! (its datagram is dropped, counted, and said once a second at most). EMFILE or
//! ENFILE opening a session's socket is our shortage, never the backend's failure.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::LiveCounts;
use super::backend::is_fd_shortage;
use super::budget::{FdBudget, Held, Throttle};
use super::connect::FailTracker;
use super::stats::{ActiveGuard, ListenerStats, Refusal};
use super::udp_sessions::{SessionLike, SessionTable};
use crate::config::{DEFAULT_UDP_IDLE_TIMEOUT_SECS, ForwardConfig, ForwardHash};
use crate::hub::{ForwardTarget, Hub};
use crate::registry::validate;
use crate::rlimit::UDP_COST;

/// Largest UDP payload over IPv4 and IPv6 without jumbograms.
const MAX_DATAGRAM: usize = 65_535;

/// Sessions per listener when `max_connections` is not set: a flood of source
/// addresses costs at most this many sockets.
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;

/// How often ended sessions are dropped from the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// Replies are read into one buffer per thread, not one per session: 10,000
    /// sessions must not hold 640 MB of buffers.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// What the listener loop and a session's task share.
#[derive(Debug)]
struct SessionState {
    /// Milliseconds since the listener's start when traffic last went either way.
    activity: AtomicU64,
    /// Bytes from the client.
    up: AtomicU64,
    /// Cancelled when the session ends, whoever ends it; a child of its socket's
    /// drain token, so the drain deadline ends it too.
    ended: CancellationToken,
}

/// A session as the listener loop holds it.
#[derive(Debug)]
struct Session {
    backend: Arc<UdpSocket>,
    state: Arc<SessionState>,
    /// The socket's descriptor in the fd budget, given back when the table lets go
    /// of the session (swept once ended, replaced, or evicted: then its reply task
    /// closes its copy of the socket at once).
    _fds: Held,
}

impl SessionLike for Session {
    fn last_activity(&self) -> u64 {
        self.state.activity.load(Ordering::Relaxed)
    }
    fn is_ended(&self) -> bool {
        self.state.ended.is_cancelled()
    }
}

/// What every session of one UDP listener shares.
#[derive(Debug)]
pub struct UdpListener {
    config: ForwardConfig,
    hub: Hub,
    fails: FailTracker,
    counts: Arc<LiveCounts>,
    stop_relays: CancellationToken,
    stats: Arc<ListenerStats>,
    evicted: metrics::Counter,
    started: Instant,
    /// Sessions each of the listener's sockets may hold: the cap shared out.
    sessions_per_socket: usize,
    /// The descriptors every forward listener of the server shares.
    fds: Arc<FdBudget>,
    /// Clients refused at the fd budget: a warning a second at most.
    budget_log: Throttle,
    /// EMFILE/ENFILE opening a session's socket: a warning a second at most.
    shortage_log: Throttle,
}

impl UdpListener {
    /// A UDP listener for `config` over the registry, receiving on `sockets` sockets
    /// (each with its own session table, as the kernel sends a client address always
    /// to the same one), which share the session cap; each session's socket is taken
    /// from `fds`.
    pub fn new(
        config: ForwardConfig,
        hub: Hub,
        counts: Arc<LiveCounts>,
        stop_relays: CancellationToken,
        stats: Arc<ListenerStats>,
        sockets: usize,
        fds: Arc<FdBudget>,
    ) -> Self {
        let evicted = metrics::counter!(
            crate::metrics::FORWARD_UDP_EVICTED,
            "listener" => config.listen.to_string()
        );
        let cap = config
            .max_connections
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(DEFAULT_MAX_SESSIONS);
        // Rounded down, so that together they never hold more than the cap.
        let sessions_per_socket = (cap / sockets.max(1)).max(1);
        UdpListener {
            fails: FailTracker::new(config.max_fails, config.fail_timeout),
            config,
            hub,
            counts,
            stop_relays,
            stats,
            evicted,
            started: Instant::now(),
            sessions_per_socket,
            fds,
            budget_log: Throttle::default(),
            shortage_log: Throttle::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle_timeout(&self) -> Duration {
        self.config
            .idle_timeout
            .unwrap_or(Duration::from_secs(DEFAULT_UDP_IDLE_TIMEOUT_SECS))
    }

    /// Reads client datagrams until `stop_accepting` fires; sessions run on `tracker`
    /// and end by themselves afterwards (idle timeout, or the drain deadline).
    pub async fn serve(
        self: Arc<Self>,
        socket: UdpSocket,
        stop_accepting: CancellationToken,
        tracker: TaskTracker,
    ) {
        let socket = Arc::new(socket);
        let mut sessions: SessionTable<Session> = SessionTable::new(self.sessions_per_socket);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        // Made once, not per datagram (see `relay_replies`).
        let stopped = stop_accepting.cancelled();
        tokio::pin!(stopped);
        // This socket's own child of the drain token: its sessions wait on it, so
        // their waiter list is this thread's, not one every worker thread locks.
        let stop_relays = self.stop_relays.child_token();
        loop {
            let received = tokio::select! {
                () = &mut stopped => break,
                _ = sweep.tick() => {
                    sessions.remove_ended();
                    continue;
                }
                received = socket.recv_from(&mut buf) => received,
            };
            let (len, client) = match received {
                Ok(pair) => pair,
                Err(err) => {
                    // Linux reports an earlier send's ICMP error here; nothing to do.
                    tracing::debug!(listen = %self.config.listen, %err, "udp receive failed");
                    continue;
                }
            };
            let datagram = &buf[..len];
            if let Some(session) = sessions.live(&client) {
                session
                    .state
                    .activity
                    .store(self.now_ms(), Ordering::Relaxed);
                session.state.up.fetch_add(len as u64, Ordering::Relaxed);
                if let Err(err) = session.backend.send(datagram).await {
                    tracing::debug!(%client, %err, "udp send to backend failed; ending the session");
                    session.state.ended.cancel();
                }
                continue;
            }
            let Some(fds) = self.take_fd(&mut sessions, client) else {
                continue;
            };
            let Some(session) = self
                .open(&socket, client, datagram, fds, &tracker, &stop_relays)
                .await
            else {
                continue;
            };
            if let Some(evicted) = sessions.insert(client, session) {
                evicted.state.ended.cancel();
                self.evicted.increment(1);
                tracing::debug!(%client, "udp session table full: the oldest idle session ended");
            }
        }
        tracing::info!(listen = %self.config.listen, "udp forward listener closed");
    }

    /// The descriptor of `client`'s new session from the fd budget. When the budget
    /// is full, this socket's table frees a place as it does at its own cap (an ended
    /// session, else the oldest idle one is evicted); with nothing to free, the
    /// client is refused (counted, and said once a second at most).
    fn take_fd(&self, sessions: &mut SessionTable<Session>, client: SocketAddr) -> Option<Held> {
        if let Some(fds) = self.fds.try_take(UDP_COST) {
            return Some(fds);
        }
        // Bounded: one place freed, one more try.
        if let Some(evicted) = sessions.free_one() {
            evicted.state.ended.cancel();
            self.evicted.increment(1);
            tracing::debug!(%client, "fd budget full: the oldest idle udp session ended");
        }
        if let Some(fds) = self.fds.try_take(UDP_COST) {
            return Some(fds);
        }
        self.stats.refused(Refusal::FdBudget);
        if let Some(refused) = self.budget_log.hit() {
            tracing::warn!(
                listener = %self.config.listen, %client, refused,
                held = self.fds.held(), budget = self.fds.total(),
                "forwarder at its fd budget: no new udp session (datagram dropped)"
            );
        }
        None
    }

    /// Starts `client`'s session with its first datagram: picks a backend, connects
    /// a socket to it (its descriptor `fds` taken from the budget), sends, and runs
    /// the reply side in its own task.
    async fn open(
        self: &Arc<Self>,
        listener: &Arc<UdpSocket>,
        client: SocketAddr,
        first: &[u8],
        fds: Held,
        tracker: &TaskTracker,
        stop_relays: &CancellationToken,
    ) -> Option<Session> {
        let key = match self.config.hash {
            ForwardHash::RemoteAddr => Some(client.ip().to_string()),
            // Refused for UDP by the configuration: MQTT runs over a stream.
            ForwardHash::None | ForwardHash::MqttClientId => None,
        };
        let target = self.pick(key.as_deref().map(str::as_bytes))?;
        let backend = match connect(&target.address).await {
            Ok(socket) => Arc::new(socket),
            Err(err) if is_fd_shortage(&err) => {
                self.stats.refused(Refusal::FdShortage);
                if let Some(refused) = self.shortage_log.hit() {
                    tracing::warn!(
                        listener = %self.config.listen, %client, %err, refused,
                        "out of file descriptors opening a udp session: datagram dropped; \
                         the backend is not counted failed"
                    );
                }
                return None;
            }
            Err(err) => {
                self.stats.connect_failed();
                self.fails.failed(&target.address, Instant::now());
                tracing::debug!(%client, backend = %target.address, %err, "udp backend socket failed");
                return None;
            }
        };
        let state = Arc::new(SessionState {
            activity: AtomicU64::new(self.now_ms()),
            up: AtomicU64::new(first.len() as u64),
            // A child of the drain token: the drain ends the session too.
            ended: stop_relays.child_token(),
        });
        let active = self.stats.opened();
        self.counts.open(&target.id);
        if let Err(err) = backend.send(first).await {
            tracing::debug!(%client, backend = %target.address, %err, "udp send to backend failed");
            self.counts.close(&target.id);
            return None;
        }
        let session = Session {
            backend: Arc::clone(&backend),
            state: Arc::clone(&state),
            _fds: fds,
        };
        let span = tracing::debug_span!(
            "udp",
            service = %self.config.service,
            %client,
            backend = %target.address
        );
        let me = Arc::clone(self);
        let listener = Arc::clone(listener);
        tracker.spawn(
            async move {
                me.relay_replies(&listener, &backend, client, &state, &target, active)
                    .await;
            }
            .instrument(span),
        );
        Some(session)
    }

    /// The best backend by the ranking (its hand-out counted), skipping those out
    /// for `fail_timeout` (unless all are) and Unix sockets (streams only).
    fn pick(&self, key: Option<&[u8]>) -> Option<ForwardTarget> {
        let now = Instant::now();
        let service = &self.config.service;
        let not_datagram = |address: &str| validate::unix_socket_path(address).is_some();
        let first = self.hub.forward_candidates(service, key, 1, &|address| {
            not_datagram(address) || self.fails.is_out(address, now)
        });
        let target = match first.into_iter().next() {
            Some(target) => Some(target),
            None => self
                .hub
                .forward_candidates(service, key, 1, &not_datagram)
                .into_iter()
                .next(),
        };
        if target.is_none() {
            tracing::debug!(%service, "no backend for a udp client; datagram dropped");
        }
        target
    }

    /// Sends the backend's datagrams back to the client until the session ends.
    async fn relay_replies(
        &self,
        listener: &UdpSocket,
        backend: &UdpSocket,
        client: SocketAddr,
        state: &SessionState,
        target: &ForwardTarget,
        _active: ActiveGuard,
    ) {
        let idle = self.idle_timeout();
        let mut responses = 0u64;
        let mut down = 0u64;
        let limit = self.config.udp_responses;
        let done = |responses: u64| limit.is_some_and(|limit| responses >= limit);
        // Made once per session, not per datagram: each `cancelled()` joins a waiter
        // list under a lock, and a fresh sleep is a timer inserted and removed.
        // `ended` also fires when the drain token does (it is its child).
        let ended = state.ended.cancelled();
        let idle_sleep = tokio::time::sleep(idle);
        tokio::pin!(ended, idle_sleep);
        while !done(responses) {
            let last = state.activity.load(Ordering::Relaxed);
            let deadline = self.started + Duration::from_millis(last) + idle;
            if idle_sleep.deadline() != deadline {
                idle_sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                () = &mut ended => break,
                () = &mut idle_sleep => {
                    if state.activity.load(Ordering::Relaxed) == last {
                        tracing::debug!(%client, backend = %target.address, "udp session idle");
                        break;
                    }
                }
                readable = backend.readable() => {
                    if let Err(err) = readable {
                        tracing::debug!(%client, %err, "udp backend socket failed");
                        break;
                    }
                    match self.forward_ready(listener, backend, client, state, &mut responses, limit).await {
                        Ok(bytes) => {
                            down += bytes;
                            state.activity.store(self.now_ms(), Ordering::Relaxed);
                        }
                        Err(err) => {
                            // ECONNREFUSED: the backend's port is closed (ICMP).
                            self.stats.connect_failed();
                            self.fails.failed(&target.address, Instant::now());
                            tracing::debug!(%client, backend = %target.address, %err, "udp backend refused; session ends");
                            break;
                        }
                    }
                }
            }
        }
        state.ended.cancel();
        self.counts.close(&target.id);
        self.stats.carried(state.up.load(Ordering::Relaxed), down);
    }

    /// Moves every datagram waiting on the backend socket to the client, up to the
    /// response limit; answers the bytes moved.
    async fn forward_ready(
        &self,
        listener: &UdpSocket,
        backend: &UdpSocket,
        client: SocketAddr,
        state: &SessionState,
        responses: &mut u64,
        limit: Option<u64>,
    ) -> io::Result<u64> {
        let mut moved = 0;
        while limit.is_none_or(|limit| *responses < limit) {
            let last = limit.is_some_and(|limit| *responses + 1 >= limit);
            let sent = REPLY_BUF.with_borrow_mut(|buf| {
                let n = backend.try_recv(buf)?;
                // The session ends with this reply: say so before the client can
                // answer it, or its next datagram would go to this socket, whose
                // reply nobody reads any more.
                if last {
                    state.ended.cancel();
                }
                match listener.try_send_to(&buf[..n], client) {
                    Ok(_) => Ok(Ok(n)),
                    // The listener's send buffer is full: wait for it, with a copy.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Err(buf[..n].to_vec())),
                    Err(e) => Err(e),
                }
            });
            let n = match sent {
                Ok(Ok(n)) => n,
                Ok(Err(copy)) => {
                    listener.send_to(&copy, client).await?;
                    copy.len()
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            *responses += 1;
            moved += n as u64;
        }
        Ok(moved)
    }
}

/// A socket connected to `address` (`host:port`). Not bound first: `connect` picks
/// the local address and port itself, one system call fewer per session.
async fn connect(address: &str) -> io::Result<UdpSocket> {
    let peer = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(peer),
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )?;
    socket.connect(&peer.into())?;
    UdpSocket::from_std(socket.into())
}
