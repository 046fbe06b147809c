//! Where a forward listener (and the DNS server's UDP side, through [`run_as`])
//! receives: one `SO_REUSEPORT` socket per worker thread,
//! each thread with its own current-thread runtime, so a TCP connection is accepted,
//! connected and relayed, and a UDP session opened and relayed, on one thread with no
//! cross-thread wake-up (as nginx's worker processes do; the kernel spreads new
//! connections, and UDP clients by their address, over the sockets). Inside a
//! current-thread runtime (the tests, whose clock they move) the listener runs on
//! that runtime instead, on one socket.
//!
//! TCP listening sockets carry `TCP_NODELAY` and the keepalive settings: Linux copies
//! them to every accepted socket, which saves five `setsockopt` calls per connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::RuntimeFlavor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pending connections the kernel queues per listening socket.
const BACKLOG: i32 = 4096;

/// Turns on TCP keepalive (idle `time`, then probes every `time / 4`, 4 of them), so
/// a dead cellular peer or a NAT that dropped the mapping is noticed.
pub fn keepalive(socket: SockRef<'_>, time: Option<Duration>) {
    let Some(time) = time else { return };
    let interval = (time / 4).max(Duration::from_secs(1));
    let params = TcpKeepalive::new()
        .with_time(time)
        .with_interval(interval)
        .with_retries(4);
    if let Err(err) = socket.set_tcp_keepalive(&params) {
        tracing::debug!(%err, "could not set TCP keepalive");
    }
}

/// How many accept loops a listener gets: one per worker thread of a multi-thread
/// runtime, one inside a current-thread runtime. Call it inside a runtime.
pub fn loops() -> usize {
    match tokio::runtime::Handle::current().runtime_flavor() {
        RuntimeFlavor::CurrentThread => 1,
        _ => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

/// What a forward listener listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Stream connections, with `TCP_NODELAY` and keepalive.
    Tcp {
        /// TCP keepalive idle time, `None` for off.
        keepalive: Option<Duration>,
    },
    /// Datagrams.
    Udp,
}

/// How soon a worker's runtime always has a timer due (see [`keep_a_timer_due`]).
const TIMER_ANCHOR: Duration = Duration::from_millis(100);

/// Keeps a timer due within [`TIMER_ANCHOR`] on this runtime, for as long as it runs.
///
/// tokio wakes its own driver (an `eventfd` write, then one more `epoll_wait`) when
/// a new timer is due sooner than every timer it has, and a worker with no other
/// timer would do that for each connection's connect timeout (strace: 0.6 `write`
/// per relayed connection). With this one always sooner, a connect timeout of more
/// than [`TIMER_ANCHOR`] never is; the price is ten idle wake-ups a second.
async fn keep_a_timer_due() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Binds `count` sockets to `addr` with `SO_REUSEPORT` (the first picks the port
/// when `addr`'s is 0; the others take the same); TCP ones listen.
fn bind(addr: SocketAddr, count: usize, transport: Transport) -> io::Result<Vec<Socket>> {
    let mut bound: Vec<Socket> = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let domain = Domain::for_address(at);
        let socket = match transport {
            Transport::Tcp { .. } => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            Transport::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
        };
        if let Transport::Tcp { keepalive: time } = transport {
            // Not for UDP: there SO_REUSEADDR would let a second socket share the port.
            socket.set_reuse_address(true)?;
            socket.set_tcp_nodelay(true)?;
            keepalive(SockRef::from(&socket), time);
        }
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        if matches!(transport, Transport::Tcp { .. }) {
            socket.listen(BACKLOG)?;
        }
        if let Some(local) = socket.local_addr()?.as_socket() {
            at = local;
        }
        bound.push(socket);
    }
    Ok(bound)
}

/// A listener's bound sockets, not yet accepting.
#[derive(Debug)]
pub struct Bound {
    sockets: Vec<Socket>,
    /// The address really bound (the port picked when asked for 0).
    pub local: SocketAddr,
}

impl Bound {
    /// How many sockets, each with its own loop, share the listener's work.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }
}

/// A tokio socket made from a bound one, inside the runtime that will poll it.
pub trait FromBound: Sized + Send + 'static {
    /// Hands `socket` to the current runtime.
    ///
    /// # Errors
    /// The runtime could not register it.
    fn from_bound(socket: Socket) -> io::Result<Self>;
}

impl FromBound for TcpListener {
    fn from_bound(socket: Socket) -> io::Result<Self> {
        TcpListener::from_std(socket.into())
    }
}

impl FromBound for UdpSocket {
    fn from_bound(socket: Socket) -> io::Result<Self> {
        UdpSocket::from_std(socket.into())
    }
}

/// Binds a forward listener's sockets: one per accept loop (see the module doc).
///
/// # Errors
/// Binding failed.
pub fn bind_listener(addr: SocketAddr, transport: Transport) -> io::Result<Bound> {
    let sockets = bind(addr, loops(), transport)?;
    let local = sockets[0]
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listening socket has no IP address"))?;
    Ok(Bound { sockets, local })
}

/// Starts a loop on each bound socket: `serve(listener, stop, tracker)` runs
/// until `stop` fires, its connections on `tracker`. Every loop and the connections
/// it started are tracked by `relays` until they end.
///
/// # Errors
/// A socket could not be handed to tokio, or a worker thread not started (the loops
/// started before it run).
pub fn run<L, S, F>(
    bound: Bound,
    stop: CancellationToken,
    relays: &TaskTracker,
    serve: S,
) -> io::Result<()>
where
    L: FromBound,
    S: Fn(L, CancellationToken, TaskTracker) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    run_as("forward", bound, stop, relays, serve)
}

/// [`run`] for another server than a forward listener (DNS): `role` names its
/// threads (`<role>-N`) and its log lines.
///
/// # Errors
/// As [`run`].
pub fn run_as<L, S, F>(
    role: &'static str,
    bound: Bound,
    stop: CancellationToken,
    relays: &TaskTracker,
    serve: S,
) -> io::Result<()>
where
    L: FromBound,
    S: Fn(L, CancellationToken, TaskTracker) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // Said once, when the last of the listener's sockets is closed: a device that
    // connects after the line must be refused.
    let open = Arc::new(AtomicUsize::new(bound.sockets.len()));
    let local = bound.local;
    let serve = move |listener: L, stop: CancellationToken, tracker: TaskTracker| {
        let (serve, open) = (serve.clone(), Arc::clone(&open));
        async move {
            serve(listener, stop, tracker).await;
            if open.fetch_sub(1, Ordering::AcqRel) == 1 {
                tracing::info!(listen = %local, "{role} listener closed");
            }
        }
    };
    if bound.sockets.len() == 1 {
        let socket = bound.sockets.into_iter().next().expect("one socket");
        let listener = L::from_bound(socket)?;
        relays.spawn(serve(listener, stop, relays.clone()));
        return Ok(());
    }
    for (i, socket) in bound.sockets.into_iter().enumerate() {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let (serve, stop) = (serve.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("{role}-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(%err, "{role} worker: cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match L::from_bound(socket) {
                        Ok(listener) => listener,
                        Err(err) => {
                            tracing::error!(%err, "{role} worker: cannot use its socket");
                            return;
                        }
                    };
                    // Its runtime's descriptors are open from here on (tests that
                    // count a process's descriptors wait for this line).
                    tracing::debug!(worker = i, listen = %local, "{role} worker ready");
                    // Its own tracker: the runtime must outlive every connection it
                    // started, or dropping it would cut them.
                    let connections = TaskTracker::new();
                    let anchor = tokio::spawn(keep_a_timer_due());
                    serve(listener, stop, connections.clone()).await;
                    connections.close();
                    connections.wait().await;
                    anchor.abort();
                });
                drop(done);
            })?;
        relays.spawn(async move {
            let _ = finished.await;
        });
    }
    Ok(())
}
