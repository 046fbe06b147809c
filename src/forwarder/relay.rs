//! Byte relay between a device and its backend, both ways, with half-close forwarded
//! and an optional idle timeout.
//!
//! Memory is the design constraint: a fleet keeps hundreds of thousands of mostly idle
//! links, so an idle relay owns no data buffer. It waits for readiness, then reads into
//! a per-thread buffer and writes straight on. Only bytes the destination cannot take
//! yet are copied into a per-connection stash, which is freed once written. Each
//! direction keeps its own EOF state; a FIN from one side shuts the other's write half.
//!
//! The device is a TCP socket; the backend is any [`Stream`] (TCP, or a Unix socket
//! for a `unix:` static instance), the relay being compiled once per kind.

use std::cell::RefCell;
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::pin::Pin;
use std::time::Duration;

use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::unistd::pipe2;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::backend::Stream;

/// Size of each worker thread's relay buffer: large reads mean few system calls per
/// megabyte on busy links, and idle links do not pay for it.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// Reads per wake-up before yielding, so one busy link cannot starve the others.
const READS_PER_WAKE: usize = 16;

/// Bytes a direction carries through the buffer before it switches to `splice(2)`:
/// bulk transfers then move through a kernel pipe without a copy into user space,
/// while chatty device links never pay for a pipe.
pub const SPLICE_AFTER: u64 = 1 << 20;

/// Capacity asked for the pipe of a busy direction.
const PIPE_SIZE: usize = 1 << 20;

/// A kernel pipe between the two sockets of one busy direction.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    held: usize,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe means fewer splices per megabyte; the kernel may refuse.
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .ok()
            .and_then(|size| usize::try_from(size).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }
}

fn splice_flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; BUFFER_SIZE]);
}

/// Runs `f` on this worker thread's relay buffer (the TLS relay reads into it too).
/// `f` must not await: the buffer is borrowed only while it runs.
pub(super) fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|buffer| f(&mut buffer.borrow_mut()))
}

/// Bytes carried in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Device to backend.
    pub up: u64,
    /// Backend to device.
    pub down: u64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed their sending half.
    Closed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// The server stopped waiting for relays to drain.
    Shutdown,
}

/// Bytes read from one side that the other could not take yet.
#[derive(Debug)]
struct Stash {
    bytes: Vec<u8>,
    written: usize,
}

/// One direction of the relay.
#[derive(Debug, Default)]
struct Direction {
    stash: Option<Box<Stash>>,
    /// Set once the direction is busy (see [`SPLICE_AFTER`]).
    pipe: Option<Box<Pipe>>,
    /// The source sent FIN.
    eof: bool,
    /// The destination's write half is shut (FIN forwarded).
    shut: bool,
    carried: u64,
}

impl Direction {
    fn done(&self) -> bool {
        self.shut
    }

    /// What this direction waits for on its source and its destination.
    fn interest(&self) -> (Option<Interest>, Option<Interest>) {
        if self.shut {
            (None, None)
        } else if self.stash.is_some() || self.pipe.as_ref().is_some_and(|p| p.held > 0) {
            (None, Some(Interest::WRITABLE))
        } else if self.eof {
            (None, None)
        } else {
            (Some(Interest::READABLE), None)
        }
    }

    /// Moves bytes from `src` to `dst` until either would block. Returns whether any
    /// progress was made. `seen` is what the wake-up told of `src` and of the other
    /// direction.
    fn pump<S: Stream, D: Stream>(&mut self, src: &S, dst: &D, seen: Seen) -> io::Result<bool> {
        if self.pipe.is_none() && self.stash.is_none() && self.carried >= SPLICE_AFTER {
            // Without a pipe (descriptors exhausted, say) the buffer path goes on.
            self.pipe = Pipe::new().ok().map(Box::new);
        }
        if self.pipe.is_some() {
            return self.splice_pump(src, dst, seen);
        }
        let mut progressed = false;
        if let Some(stash) = self.stash.as_mut() {
            while stash.written < stash.bytes.len() {
                match dst.try_write(&stash.bytes[stash.written..]) {
                    Ok(n) => {
                        stash.written += n;
                        self.carried += n as u64;
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(progressed),
                    Err(e) => return Err(e),
                }
            }
            self.stash = None;
        }
        if self.eof {
            self.forward_fin(dst, seen)?;
            return Ok(progressed);
        }
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            for _ in 0..READS_PER_WAKE {
                let (n, drained) = match read_some(src, &mut buffer) {
                    Ok((0, _)) => {
                        self.eof = true;
                        self.forward_fin(dst, seen)?;
                        return Ok(true);
                    }
                    Ok(read) => read,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(progressed),
                    Err(e) => return Err(e),
                };
                progressed = true;
                let mut written = 0;
                while written < n {
                    match dst.try_write(&buffer[written..n]) {
                        Ok(w) => written += w,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                self.carried += written as u64;
                // A short read after the source's FIN was seen took everything the
                // FIN came after: the read that would only answer 0 is saved.
                if drained && seen.src_closed {
                    self.eof = true;
                }
                if written == n && drained {
                    if self.eof {
                        self.forward_fin(dst, seen)?;
                    }
                    return Ok(true);
                }
                if written < n {
                    // The destination is full: keep the rest and stop reading until it
                    // drains (backpressure reaches the source through its TCP window).
                    self.stash = Some(Box::new(Stash {
                        bytes: buffer[written..n].to_vec(),
                        written: 0,
                    }));
                    return Ok(true);
                }
            }
            Ok(progressed)
        })
    }

    /// [`Direction::pump`] through the pipe: socket to pipe to socket, no copy.
    fn splice_pump<S: Stream, D: Stream>(
        &mut self,
        src: &S,
        dst: &D,
        seen: Seen,
    ) -> io::Result<bool> {
        let mut progressed = false;
        let pipe = self.pipe.as_mut().expect("called with a pipe");
        for _ in 0..READS_PER_WAKE {
            while pipe.held > 0 {
                let moved = dst.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, dst, None, pipe.held, splice_flags())
                        .map_err(io::Error::from)
                });
                match moved {
                    Ok(n) => {
                        pipe.held -= n;
                        self.carried += n as u64;
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(progressed),
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                break;
            }
            let taken = src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe.write, None, pipe.capacity, splice_flags())
                    .map_err(io::Error::from)
            });
            match taken {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    pipe.held = n;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(progressed),
                Err(e) => return Err(e),
            }
        }
        if self.eof && pipe.held == 0 {
            self.forward_fin(dst, seen)?;
            return Ok(true);
        }
        Ok(progressed)
    }

    fn forward_fin<D: Stream>(&mut self, dst: &D, seen: Seen) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            // The last FIN: the relay ends now and the close that follows sends it,
            // with nothing unread on either socket (both FINs were read), so no RST.
            if seen.other_shut {
                return Ok(());
            }
            match SockRef::from(dst).shutdown(Shutdown::Write) {
                // The peer is already gone: nothing left to tell it.
                Err(e) if e.kind() == ErrorKind::NotConnected => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// What one wake-up of the relay told a direction.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The source's readiness, taken before this pump's reads, showed its FIN (and no
    /// error): once a read drains it, nothing but the FIN is left.
    src_closed: bool,
    /// The other direction has forwarded its FIN already.
    other_shut: bool,
}

/// Reads what `src` holds into `buffer`; also says whether the read was short, i.e.
/// drained the socket.
///
/// A short read is reported to tokio as "would block" from inside `try_io`, so its
/// readiness is cleared against the state seen *before* the read: data that
/// arrives afterwards raises readiness again and is not lost, and the read that
/// would only have answered "would block" is saved. A FIN that came with the data
/// stays visible as read-closed (tokio never clears that).
fn read_some<S: Stream>(src: &S, buffer: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut short = None;
    let read = src.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(src)).read(buffer)?;
        if n > 0 && n < buffer.len() {
            short = Some(n);
            return Err(io::Error::from(ErrorKind::WouldBlock));
        }
        Ok(n)
    });
    match (read, short) {
        (_, Some(n)) => Ok((n, true)),
        (Ok(n), None) => Ok((n, false)),
        (Err(e), None) => Err(e),
    }
}

/// The peer's FIN is in, with no error beside it (a reset must surface as an error).
fn closed(ready: tokio::io::Ready) -> bool {
    ready.is_read_closed() && !ready.is_error()
}

fn merge(a: Option<Interest>, b: Option<Interest>) -> Option<Interest> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a | b),
        (a, b) => a.or(b),
    }
}

/// Relays until both directions have closed, the link idles for `idle`, or `stop`
/// fires.
///
/// # Errors
/// The first socket error (a reset, say); both sockets are closed when they drop.
pub async fn relay<B: Stream>(
    device: &TcpStream,
    backend: &B,
    idle: Option<Duration>,
    stop: &CancellationToken,
) -> io::Result<(Ending, Carried)> {
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut idle_timer: Option<(Duration, Pin<Box<Sleep>>)> =
        idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut last_activity = Instant::now();
    // Made once: each `cancelled()` joins (and on drop leaves) the token's waiter
    // list under the token's lock, which a fresh one per wake-up would take twice.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if up.done() && down.done() {
            break;
        }
        let (up_src, up_dst) = up.interest();
        let (down_src, down_dst) = down.interest();
        let device_interest = merge(up_src, down_dst);
        let backend_interest = merge(down_src, up_dst);
        if device_interest.is_none() && backend_interest.is_none() {
            break;
        }
        let progressed = tokio::select! {
            ready = device.ready(device_interest.unwrap_or(Interest::READABLE)), if device_interest.is_some() => {
                let ready = ready?;
                let mut moved = false;
                if ready.is_readable() || ready.is_read_closed() {
                    let seen = Seen { src_closed: closed(ready), other_shut: down.shut };
                    moved |= up.pump(device, backend, seen)?;
                }
                if ready.is_writable() || ready.is_write_closed() {
                    moved |= down.pump(backend, device, Seen { other_shut: up.shut, ..Seen::default() })?;
                }
                moved
            }
            ready = backend.ready(backend_interest.unwrap_or(Interest::READABLE)), if backend_interest.is_some() => {
                let ready = ready?;
                let mut moved = false;
                if ready.is_readable() || ready.is_read_closed() {
                    let seen = Seen { src_closed: closed(ready), other_shut: up.shut };
                    moved |= down.pump(backend, device, seen)?;
                }
                if ready.is_writable() || ready.is_write_closed() {
                    moved |= up.pump(device, backend, Seen { other_shut: down.shut, ..Seen::default() })?;
                }
                moved
            }
            () = async {
                match idle_timer.as_mut() {
                    Some((_, sleep)) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let (limit, sleep) = idle_timer.as_mut().expect("only armed with a timer");
                let deadline = last_activity + *limit;
                if Instant::now() >= deadline {
                    return Ok((Ending::IdleTimeout, Carried { up: up.carried, down: down.carried }));
                }
                // Activity since the timer was armed: sleep until the real deadline.
                sleep.as_mut().reset(deadline);
                false
            }
            () = &mut stopped => {
                return Ok((Ending::Shutdown, Carried { up: up.carried, down: down.carried }));
            }
        };
        if progressed && idle_timer.is_some() {
            last_activity = Instant::now();
        }
    }
    Ok((
        Ending::Closed,
        Carried {
            up: up.carried,
            down: down.carried,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_and_forwards_half_close() {
        // device_peer <-> [device | relay | backend] <-> backend_peer
        let (mut device_peer, device) = pair().await;
        let (backend, mut backend_peer) = pair().await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(async move { relay(&device, &backend, None, &stop).await });
        device_peer.write_all(b"hello").await.unwrap();
        device_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "the device's FIN reached the backend");
        // The backend can still answer after the device's FIN.
        backend_peer.write_all(b"world").await.unwrap();
        backend_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        device_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world");
        let (ending, carried) = task.await.unwrap().unwrap();
        assert_eq!(ending, Ending::Closed);
        assert_eq!(carried, Carried { up: 5, down: 5 });
    }

    #[tokio::test]
    async fn idle_links_time_out() {
        let (_device_peer, device) = pair().await;
        let (backend, _backend_peer) = pair().await;
        let stop = CancellationToken::new();
        let (ending, _) = relay(&device, &backend, Some(Duration::from_millis(200)), &stop)
            .await
            .unwrap();
        assert_eq!(ending, Ending::IdleTimeout);
    }

    #[tokio::test]
    async fn bulk_transfers_switch_to_splice_and_stay_byte_exact() {
        let (mut device_peer, device) = pair().await;
        let (backend, mut backend_peer) = pair().await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(async move { relay(&device, &backend, None, &stop).await });
        let size = 8 * SPLICE_AFTER as usize + 12_345;
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            device_peer.write_all(&sent).await.unwrap();
            device_peer.shutdown().await.unwrap();
            device_peer
        });
        let mut got = Vec::with_capacity(size);
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert!(got == payload, "bytes differ after splicing");
        backend_peer.shutdown().await.unwrap();
        let mut device_peer = writer.await.unwrap();
        let mut rest = Vec::new();
        device_peer.read_to_end(&mut rest).await.unwrap();
        let (ending, carried) = task.await.unwrap().unwrap();
        assert_eq!(ending, Ending::Closed);
        assert_eq!(carried.up, size as u64);
    }

    #[tokio::test]
    async fn a_unix_backend_splices_both_ways_and_forwards_half_close() {
        // device_peer <-> [device (TCP) | relay | backend (Unix)] <-> backend_peer
        let (mut device_peer, device) = pair().await;
        let (backend, mut backend_peer) = tokio::net::UnixStream::pair().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(async move { relay(&device, &backend, None, &stop).await });
        let size = 4 * SPLICE_AFTER as usize + 999;
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 + i / 7919) as u8).collect();
        // The first MiB and a byte, all delivered: the relay has no stash left, so the
        // rest goes through the pipe into the Unix socket.
        let first = SPLICE_AFTER as usize + 1;
        let mut got = vec![0; first];
        let (sent, read) = tokio::join!(
            device_peer.write_all(&payload[..first]),
            backend_peer.read_exact(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        let (sent, read) = tokio::join!(
            async {
                device_peer.write_all(&payload[first..]).await?;
                device_peer.shutdown().await
            },
            backend_peer.read_to_end(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        assert!(
            got == payload,
            "bytes differ after splicing into a Unix socket"
        );
        // The device's FIN reached the backend, which still answers: spliced out of
        // the Unix socket, and its own FIN reaches the device.
        let mut back = Vec::with_capacity(size);
        let (sent, read) = tokio::join!(
            async {
                backend_peer.write_all(&got).await?;
                backend_peer.shutdown().await
            },
            device_peer.read_to_end(&mut back)
        );
        sent.unwrap();
        read.unwrap();
        assert!(
            back == payload,
            "bytes differ after splicing out of a Unix socket"
        );
        let (ending, carried) = task.await.unwrap().unwrap();
        assert_eq!(ending, Ending::Closed);
        assert_eq!(
            carried,
            Carried {
                up: size as u64,
                down: size as u64
            }
        );
    }
}
