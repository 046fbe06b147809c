//! The DNS server's UDP side: one `SO_REUSEPORT` socket per core, each drained by its
//! own thread and current-thread runtime (`forwarder::workers`), datagrams read and
//! answers sent in batches (`recvmmsg` through nix, `sendmmsg` through rustix, no
//! `unsafe` here), and
//! every query that gets no answer counted by why in [`DNS_DROPPED`]: the kernel's
//! receive-queue overflow (the socket's `drops` in `/proc/net/udp`, read every
//! second), an answer not sent, nothing to answer to.
//! Answers come from `Server::answer_into`; this file must not touch the registry.

use std::cell::RefCell;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::rate::{self, SourceLimit};
use super::{RATE_LIMITED_SLOT, Server, Transport};
use crate::metrics::DNS_DROPPED;

/// A UDP query's buffer: longer datagrams are cut, fail to decode and get `FORMERR`.
pub const MAX_QUERY: usize = 4096;

/// Datagrams read (and answers sent) per system call.
const BATCH: usize = 32;

/// Batches read in a row before the loop looks at its stop signal again.
const BATCHES_PER_WAKE: usize = 64;

/// The receive buffer asked for each socket (Linux caps it at `net.core.rmem_max`):
/// room for a burst while the thread is busy, so that fewer queries are dropped.
const RECV_BUFFER: usize = 4 << 20;

/// How long a batch's answers may wait for room in the send buffer; the ones still
/// unsent then are dropped and counted.
const SEND_WAIT: Duration = Duration::from_millis(200);

/// [`DNS_DROPPED`] registered once per reason.
#[derive(Debug, Clone)]
pub struct Dropped {
    receive_buffer: metrics::Counter,
    send_failed: metrics::Counter,
    unanswerable: metrics::Counter,
    rate_limited: metrics::Counter,
}

impl Dropped {
    /// The counters, registered now (so each shows 0 before the first drop).
    pub fn new() -> Dropped {
        let of = |reason: &'static str| metrics::counter!(DNS_DROPPED, "reason" => reason);
        Dropped {
            receive_buffer: of("receive_buffer"),
            send_failed: of("send_failed"),
            unanswerable: of("unanswerable"),
            rate_limited: of("rate_limited"),
        }
    }
}

/// What one socket's loop reuses from batch to batch: no allocation per query.
struct Batch {
    queries: Box<[[u8; MAX_QUERY]; BATCH]>,
    lens: [usize; BATCH],
    peers: [Option<SocketAddr>; BATCH],
    /// Answers, the first `ready` of a batch to be sent to `peers[..ready]`.
    answers: Vec<Vec<u8>>,
}

thread_local! {
    /// The message headers `recvmmsg` fills in, one set per thread: they hold raw
    /// pointers, so they are not `Send` and cannot live in the loop's future; they
    /// are scratch space within one call, so any thread's set serves.
    /// (No control messages: nix's `recvmmsg` does not give a header back its
    /// control buffer's length after a datagram that carried none, so `SO_RXQ_OVFL`
    /// would go unseen; the drops are read from `/proc` instead.)
    static HEADERS: RefCell<MultiHeaders<SockaddrStorage>> =
        RefCell::new(MultiHeaders::preallocate(BATCH, None));
}

impl Batch {
    fn new() -> Batch {
        Batch {
            queries: Box::new([[0u8; MAX_QUERY]; BATCH]),
            lens: [0; BATCH],
            peers: [None; BATCH],
            answers: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
        }
    }

    /// Reads up to [`BATCH`] datagrams without waiting; how many.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        HEADERS.with_borrow_mut(|headers| {
            let mut slices = self.queries.each_mut().map(|q| [IoSliceMut::new(q)]);
            let results = recvmmsg(
                socket.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut count = 0;
            for (i, message) in results.enumerate() {
                self.lens[i] = message.bytes;
                self.peers[i] = message.address.as_ref().and_then(socket_addr);
                count = i + 1;
            }
            Ok(count)
        })
    }

    /// Sends `answers[from..to]` to `peers[from..to]` without waiting; how many went.
    fn send(&self, socket: &UdpSocket, from: usize, to: usize) -> io::Result<usize> {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let addrs: [SocketAddrAny; BATCH] =
            std::array::from_fn(|i| SocketAddrAny::from(self.peers[i].unwrap_or(unspecified)));
        let slices: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(&self.answers[i])]);
        let mut control: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut control = control.iter_mut();
        let mut messages: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|i| {
            let control = control.next().expect("one buffer per message");
            MMsgHdr::new_with_addr(&addrs[i], &slices[i], control)
        });
        let messages = messages.get_mut(from..to).unwrap_or_default();
        sendmmsg(socket, messages, SendFlags::DONTWAIT).map_err(io::Error::from)
    }
}

/// Serves queries on `socket` until `stop` fires: reads a batch, answers each query
/// (past `limit`, a source gets [`rate::slip`]), sends the answers in one call.
pub async fn serve(
    server: Arc<Server>,
    socket: UdpSocket,
    limit: Option<Arc<SourceLimit>>,
    stop: CancellationToken,
) {
    prepare(&socket);
    let mut kernel = KernelDrops::of(&socket);
    let mut tick = tokio::time::interval(DROPS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Batch::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                kernel.count(&server.dropped.receive_buffer);
                continue;
            }
            ready = socket.readable() => if let Err(err) = ready {
                tracing::warn!(%err, "dns udp socket failed");
                break;
            },
        }
        for _ in 0..BATCHES_PER_WAKE {
            let count = match socket.try_io(Interest::READABLE, || batch.receive(&socket)) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                // An earlier answer's ICMP error, say: nothing to do.
                Err(err) => {
                    tracing::debug!(%err, "dns udp receive failed");
                    break;
                }
            };
            let ready = answer_batch(&server, &mut batch, count, limit.as_deref());
            send_all(&server, &socket, &mut batch, ready).await;
        }
    }
    kernel.count(&server.dropped.receive_buffer);
    tracing::debug!("dns udp loop stopped");
}

/// How often the kernel's drop counter of a socket is read.
const DROPS_EVERY: Duration = Duration::from_secs(1);

/// The kernel's count of datagrams it dropped for one socket (its receive queue
/// full), found by the socket's inode in `/proc/self/net/udp` and `udp6`.
struct KernelDrops {
    inode: Option<u64>,
    seen: u64,
}

impl KernelDrops {
    fn of(socket: &UdpSocket) -> KernelDrops {
        use std::os::unix::fs::MetadataExt as _;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .map(|m| m.ino())
            .inspect_err(|err| {
                tracing::warn!(%err, "dns udp: socket inode unknown; kernel drops go uncounted");
            })
            .ok();
        let mut drops = KernelDrops { inode, seen: 0 };
        drops.seen = drops.read().unwrap_or(0);
        drops
    }

    /// The socket's `drops` column now.
    fn read(&self) -> Option<u64> {
        let inode = self.inode?.to_string();
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find_map(|table| {
                table.lines().skip(1).find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.get(9) == Some(&inode.as_str()))
                        .then(|| fields.get(12)?.parse().ok())?
                })
            })
    }

    /// Adds the drops since the last look to `counter`.
    fn count(&mut self, counter: &metrics::Counter) {
        if let Some(now) = self.read() {
            counter.increment(now.saturating_sub(self.seen));
            self.seen = now;
        }
    }
}

/// Asks for [`RECV_BUFFER`].
fn prepare(socket: &UdpSocket) {
    if let Err(err) = SockRef::from(socket).set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!(%err, "dns udp: receive buffer size not set");
    }
}

/// Answers the batch's `count` queries in place: the answers to send first, in
/// `answers[..ready]` with their peers; returns `ready`.
fn answer_batch(
    server: &Server,
    batch: &mut Batch,
    count: usize,
    limit: Option<&SourceLimit>,
) -> usize {
    let mut ready = 0;
    for i in 0..count {
        let query = &batch.queries[i][..batch.lens[i].min(MAX_QUERY)];
        let peer = batch.peers[i].map(|p| p.ip());
        let allowed = match (limit, peer) {
            (Some(limit), Some(ip)) => limit.allows(ip),
            _ => true,
        };
        let mut out = std::mem::take(&mut batch.answers[ready]);
        let answered = if allowed {
            let answered = server.answer_into(query, Transport::Udp, &mut out);
            if !answered {
                server.dropped.unanswerable.increment(1);
            }
            answered
        } else {
            server.counters.count(Transport::Udp, RATE_LIMITED_SLOT);
            match rate::slip(query) {
                Some(slip) => {
                    out = slip;
                    true
                }
                None => {
                    server.dropped.rate_limited.increment(1);
                    false
                }
            }
        };
        batch.answers[ready] = out;
        if answered {
            batch.peers[ready] = batch.peers[i];
            ready += 1;
        }
    }
    ready
}

/// Sends `answers[..ready]`, waiting up to [`SEND_WAIT`] for room when the send
/// buffer is full; an answer the kernel refuses, or one still unsent then, is
/// counted as dropped.
async fn send_all(server: &Server, socket: &UdpSocket, batch: &mut Batch, ready: usize) {
    let mut at = 0;
    // Bounded: each round sends, skips one answer, or waits once.
    for _ in 0..2 * BATCH + 2 {
        if at >= ready {
            return;
        }
        match socket.try_io(Interest::WRITABLE, || batch.send(socket, at, ready)) {
            Ok(sent) => at += sent.max(1),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(SEND_WAIT, socket.writable()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            // This answer's peer cannot be sent to (`sendmmsg` reports the first
            // that fails): skip it.
            Err(err) => {
                tracing::debug!(%err, "dns udp answer not sent");
                server.dropped.send_failed.increment(1);
                at += 1;
            }
        }
    }
    let unsent = ready.saturating_sub(at);
    if unsent > 0 {
        tracing::debug!(
            unsent,
            "dns udp answers not sent: the send buffer stayed full"
        );
        server
            .dropped
            .send_failed
            .increment(u64::try_from(unsent).unwrap_or(u64::MAX));
    }
}

/// A datagram's source as a socket address (UDP over IPv4 or IPv6 only).
fn socket_addr(peer: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = peer.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    peer.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}
