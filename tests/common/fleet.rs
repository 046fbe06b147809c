//! A fleet on real loopback sockets, shared by `tests/rebalance.rs` and
//! `benches/fleet.rs` (both include this file with `#[path]`; `common/mod.rs` leaves it
//! out, so the other test files do not build it).
//!
//! - [`FleetBackend`]: a TCP server on `switchboard-client`'s [`Backend`]: it counts
//!   its live connections, heartbeats that true count, and honours each `shed` hint by
//!   closing that many connections gracefully (write half shut, then dropped), spread
//!   over the heartbeat interval, and tells what it did as [`Note`]s.
//! - [`Swarm`]: devices, one tokio task each, holding one connection through
//!   [`Device`]: `connect()`, read until EOF, `reconnect()` (the registry's jitter) on
//!   loss. It records, device-side, which backend each device holds and every
//!   (re)connect and loss with its time.
//!
//! Owns no registry and judges nothing: callers start the registry, read the records
//! and decide what they prove.

// The test and the bench each use part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchboard_client::{Backend, Device, Query, Registration, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Steps a shed hint's closes are spread over: closing them all at once would send a
/// burst of reconnects, paced closes let the ranking see each wave's hand-outs.
const SHED_STEPS: u32 = 8;
/// Share of the heartbeat interval one hint's closes take, so they are done before the
/// next heartbeat reports the count.
const SHED_SPAN: f64 = 0.8;
/// Pause after a failed accept (out of descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Longest wait for a graceful close (shutting the write half) of one connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// First connects in flight at once while a swarm starts: thousands of devices at once
/// would open as many HTTP connections to the registry.
const RAMP: usize = 32;
/// Floor of the wait after a failed connect, should the registry say jitter 0.
const RETRY_FLOOR: Duration = Duration::from_millis(50);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a backend did about a `shed` hint, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A heartbeat answer asked to shed `asked` connections while `live` were held.
    Shed { asked: u64, live: u64 },
    /// That hint's closes are done: `closed` (fewer than asked when connections ran out).
    Closed { closed: u64 },
}

/// A way to close each live connection, oldest first (ids grow with each accept).
type Closers = Arc<Mutex<BTreeMap<u64, oneshot::Sender<()>>>>;

/// A backend of the fleet: a listener on 127.0.0.1, registered and heartbeating its
/// live connection count, honouring `shed`.
pub struct FleetBackend {
    /// Where devices connect.
    pub addr: SocketAddr,
    live: Arc<AtomicU64>,
    client: Backend,
    notes: mpsc::UnboundedReceiver<Note>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl FleetBackend {
    /// Binds 127.0.0.1:0 and starts registering in `service` with `ttl_secs` (so it
    /// heartbeats every `ttl_secs / 3`, at least 1 s). Returns at once.
    ///
    /// # Errors
    /// The bind's error.
    pub async fn start(
        registry: Registry,
        service: &str,
        ttl_secs: u32,
    ) -> std::io::Result<FleetBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live = Arc::new(AtomicU64::new(0));
        let closers = Closers::default();
        let registration = Registration::new(addr.to_string()).ttl_secs(ttl_secs);
        let mut client = Backend::start(registry, service, registration, Arc::clone(&live));
        let hints = client.take_shed().expect("the first take of a new backend");
        let every = Duration::from_secs(u64::from(ttl_secs / 3).max(1));
        let (notes_tx, notes) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            Arc::clone(&live),
            Arc::clone(&closers),
            stop.clone(),
            tasks.clone(),
        ));
        tasks.spawn(shed_loop(
            hints,
            closers,
            Arc::clone(&live),
            every,
            notes_tx,
            stop.clone(),
        ));
        Ok(FleetBackend {
            addr,
            live,
            client,
            notes,
            stop,
            tasks,
        })
    }

    /// Waits until registered; the instance id.
    ///
    /// # Errors
    /// The last registration error when `timeout` passed.
    pub async fn registered(&mut self, timeout: Duration) -> switchboard_client::Result<String> {
        Ok(self.client.registered(timeout).await?.id)
    }

    /// Connections held now.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// The next note; `None` once the backend stopped.
    pub async fn next_note(&mut self) -> Option<Note> {
        self.notes.recv().await
    }

    /// The notes so far not yet taken.
    pub fn take_notes(&mut self) -> Vec<Note> {
        let mut out = Vec::new();
        while let Ok(note) = self.notes.try_recv() {
            out.push(note);
        }
        out
    }

    /// Stops heartbeating and deregisters (bounded by `timeout`), then closes every
    /// connection and waits for its tasks, at most `timeout` more.
    pub async fn stop(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.client.shutdown()).await;
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(timeout, self.tasks.wait()).await;
    }
}

/// Accepts until stopped; each connection is held by a task of its own.
async fn accept_loop(
    listener: TcpListener,
    live: Arc<AtomicU64>,
    closers: Closers,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        next_id += 1;
        let (close, closed) = oneshot::channel();
        lock(&closers).insert(next_id, close);
        live.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            id: next_id,
            live: Arc::clone(&live),
            closers: Arc::clone(&closers),
        };
        tasks.spawn(held.serve(stream, closed, stop.clone()));
    }
}

/// One accepted connection's place in the count.
struct Held {
    id: u64,
    live: Arc<AtomicU64>,
    closers: Closers,
}

impl Held {
    /// Holds the connection until the device closes it, or a shed (or the stop) closes
    /// it gracefully: write half shut, so the device reads EOF, then dropped.
    async fn serve(
        self,
        mut stream: TcpStream,
        mut closed: oneshot::Receiver<()>,
        stop: CancellationToken,
    ) {
        let mut buf = [0u8; 64];
        let ours = loop {
            tokio::select! {
                _ = &mut closed => break true,
                () = stop.cancelled() => break true,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break false,
                    // Devices may send a byte now and then; nothing to answer.
                    Ok(_) => {}
                },
            }
        };
        if ours {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
        }
        drop(stream);
        lock(&self.closers).remove(&self.id);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Honours each hint in turn: notes it, closes that many connections spread over
/// [`SHED_SPAN`] of the heartbeat interval, notes what it closed.
async fn shed_loop(
    mut hints: mpsc::Receiver<u64>,
    closers: Closers,
    live: Arc<AtomicU64>,
    every: Duration,
    notes: mpsc::UnboundedSender<Note>,
    stop: CancellationToken,
) {
    loop {
        let asked = tokio::select! {
            () = stop.cancelled() => return,
            hint = hints.recv() => match hint {
                Some(n) => n,
                None => return,
            },
        };
        let held = live.load(Ordering::Relaxed);
        let _ = notes.send(Note::Shed { asked, live: held });
        let closed = close_paced(&closers, asked, every.mul_f64(SHED_SPAN)).await;
        let _ = notes.send(Note::Closed { closed });
    }
}

/// Closes up to `n` connections, oldest first, in [`SHED_STEPS`] even steps over `span`.
async fn close_paced(closers: &Closers, n: u64, span: Duration) -> u64 {
    let mut closed = 0;
    for step in 0..SHED_STEPS {
        let quota = (n - closed).div_ceil(u64::from(SHED_STEPS - step));
        let done = close_oldest(closers, quota);
        closed += done;
        if closed >= n || done < quota {
            break;
        }
        tokio::time::sleep(span / SHED_STEPS).await;
    }
    closed
}

/// Signals the `n` oldest connections to close; how many there were.
fn close_oldest(closers: &Closers, n: u64) -> u64 {
    let mut closers = lock(closers);
    let oldest: Vec<u64> = closers
        .keys()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .copied()
        .collect();
    for id in &oldest {
        if let Some(close) = closers.remove(id) {
            let _ = close.send(());
        }
    }
    oldest.len() as u64
}

/// What happened to one device, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Connected to the backend; `first` for its very first connection (placement, not
    /// a move).
    Connected { first: bool },
    /// Lost its connection to the backend (EOF or error).
    Lost,
}

/// One device event.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub at: Instant,
    pub device: u32,
    /// Port of the backend on 127.0.0.1 (every backend of a fleet listens there).
    pub port: u16,
    pub kind: EventKind,
}

/// The swarm's device-side records.
struct Records {
    /// Port of the backend each device holds, 0 while it holds none.
    held: Vec<AtomicU32>,
    events: Mutex<Vec<Event>>,
    /// Calls of `connect()`/`reconnect()`: each resolves `/servers` once (answered
    /// from the client's cache while the registry is unreachable).
    resolves: AtomicU64,
    /// Of those, the ones that found no server to connect to.
    failures: AtomicU64,
}

impl Records {
    fn note(&self, device: u32, port: u16, kind: EventKind) {
        let now_held = if kind == EventKind::Lost { 0 } else { port };
        self.held[device as usize].store(u32::from(now_held), Ordering::Relaxed);
        lock(&self.events).push(Event {
            at: Instant::now(),
            device,
            port,
            kind,
        });
    }
}

/// Devices holding one connection each, reconnecting on loss.
pub struct Swarm {
    records: Arc<Records>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Swarm {
    /// Starts `devices` devices of `service`, sharing `registry` (one HTTP pool); the
    /// first connects are ramped, [`RAMP`] at a time.
    pub fn start(registry: &Registry, service: &str, devices: usize) -> Swarm {
        let records = Arc::new(Records {
            held: (0..devices).map(|_| AtomicU32::new(0)).collect(),
            events: Mutex::new(Vec::with_capacity(devices * 2)),
            resolves: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ramp = Arc::new(Semaphore::new(RAMP));
        let query = Query::new(service);
        for me in 0..devices {
            let device = Device::new(registry.clone(), query.clone());
            let me = u32::try_from(me).expect("fewer than 2^32 devices");
            tasks.spawn(live_device(
                device,
                me,
                Arc::clone(&records),
                Arc::clone(&ramp),
                stop.clone(),
            ));
        }
        Swarm {
            records,
            stop,
            tasks,
        }
    }

    /// Devices per backend port, now.
    pub fn holdings(&self) -> BTreeMap<u16, usize> {
        let mut per_port = BTreeMap::new();
        for held in &self.records.held {
            let port = held.load(Ordering::Relaxed);
            if port != 0 {
                *per_port
                    .entry(u16::try_from(port).expect("a port"))
                    .or_default() += 1;
            }
        }
        per_port
    }

    /// Devices holding a connection now.
    pub fn placed(&self) -> usize {
        self.holdings().values().sum()
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.records.events))
    }

    /// `/servers` resolutions so far (one per connect or reconnect).
    pub fn resolves(&self) -> u64 {
        self.records.resolves.load(Ordering::Relaxed)
    }

    /// Connects that found no server.
    pub fn failures(&self) -> u64 {
        self.records.failures.load(Ordering::Relaxed)
    }

    /// Stops every device (closing its connection), waiting at most `timeout`.
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(timeout, self.tasks.wait()).await;
    }
}

/// One device's life: connect, hold until lost, reconnect after the jitter; until
/// stopped.
async fn live_device(
    device: Device,
    me: u32,
    records: Arc<Records>,
    ramp: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut placed_once = false;
    let mut retry = false;
    loop {
        let attempt = async {
            if retry {
                device.reconnect().await
            } else {
                let _permit = ramp.acquire().await;
                device.connect().await
            }
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = attempt => outcome,
        };
        records.resolves.fetch_add(1, Ordering::Relaxed);
        retry = true;
        let (stream, server) = match outcome {
            Ok(connected) => connected,
            Err(_) => {
                records.failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_FLOOR).await;
                continue;
            }
        };
        let port = server
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0);
        let first = !placed_once;
        placed_once = true;
        records.note(me, port, EventKind::Connected { first });
        let stopped = hold(stream, &stop).await;
        records.note(me, port, EventKind::Lost);
        if stopped {
            return;
        }
    }
}

/// Reads until EOF or an error (false: the connection was lost) or until the swarm
/// stops (true).
async fn hold(mut stream: TcpStream, stop: &CancellationToken) -> bool {
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            () = stop.cancelled() => return true,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
        }
    }
}
