//! The relay of a TLS-terminating listener: plaintext between the device's TLS stream
//! and its backend, both ways, half-close forwarded (the device's close_notify or FIN
//! shuts the backend's write half; the backend's FIN sends close_notify), with the
//! idle timeout and the stop of `relay.rs`.
//!
//! Memory as in `relay.rs`: an idle relay owns no buffer of its own. Each wake-up reads
//! into the worker thread's buffer and writes straight on; only what the destination
//! cannot take yet is kept, in a stash freed once written. What rustls holds (its
//! record buffers) is rustls'.
//!
//! Must not parse what it carries.

use std::future::poll_fn;
use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::relay::{Carried, Ending, with_buffer};

/// Reads per wake-up and direction before yielding (as `relay.rs`).
const READS_PER_WAKE: usize = 16;

/// One direction: what is left to write, whether a flush is owed, the FINs.
#[derive(Debug, Default)]
struct Half {
    stash: Option<Box<[u8]>>,
    stash_written: usize,
    /// Bytes were written and not yet flushed (rustls holds records to send).
    unflushed: bool,
    /// The source closed.
    eof: bool,
    /// The destination's write half is shut.
    shut: bool,
    carried: u64,
}

impl Half {
    /// Moves what it can from `src` to `dst`; `Ready(true)` when anything moved or the
    /// direction finished, `Pending` with wakers set otherwise.
    fn pump<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
    ) -> Poll<io::Result<bool>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        if self.shut {
            return Poll::Pending;
        }
        let mut progressed = false;
        for _ in 0..READS_PER_WAKE {
            if let Some(stash) = &self.stash {
                while self.stash_written < stash.len() {
                    match Pin::new(&mut *dst).poll_write(cx, &stash[self.stash_written..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => {
                            self.stash_written += n;
                            self.carried += n as u64;
                            self.unflushed = true;
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return moved(progressed),
                    }
                }
                self.stash = None;
                self.stash_written = 0;
            }
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return moved(progressed),
                }
            }
            if self.eof {
                ready!(Pin::new(&mut *dst).poll_shutdown(cx)).or_else(|e| {
                    if e.kind() == ErrorKind::NotConnected {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                self.shut = true;
                return Poll::Ready(Ok(true));
            }
            let read = with_buffer(|buffer| {
                let mut buf = ReadBuf::new(buffer);
                match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    // A device that closes TCP without close_notify: its end, as nginx
                    // and HAProxy take it.
                    Poll::Ready(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                        Poll::Ready(Ok(None))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(())) => {
                        let filled = buf.filled();
                        let mut written = 0;
                        while written < filled.len() {
                            match Pin::new(&mut *dst).poll_write(cx, &filled[written..]) {
                                Poll::Ready(Ok(0)) => {
                                    return Poll::Ready(Err(ErrorKind::WriteZero.into()));
                                }
                                Poll::Ready(Ok(n)) => written += n,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending => break,
                            }
                        }
                        let rest = (written < filled.len()).then(|| filled[written..].into());
                        Poll::Ready(Ok(Some((written, rest))))
                    }
                }
            });
            match read {
                Poll::Pending => return moved(progressed),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(None)) => {
                    self.eof = true;
                    progressed = true;
                }
                Poll::Ready(Ok(Some((written, rest)))) => {
                    progressed = true;
                    self.carried += written as u64;
                    self.unflushed = true;
                    // The destination is full: keep the rest and stop reading until it
                    // drains (backpressure reaches the source through its window).
                    self.stash = rest;
                }
            }
        }
        // Still more to read: yield, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(progressed))
    }
}

/// What a pump that hit "would block" answers: `Ready(true)` when it moved anything,
/// `Pending` otherwise (the I/O that would block set the wakers).
fn moved(progressed: bool) -> Poll<io::Result<bool>> {
    if progressed {
        Poll::Ready(Ok(true))
    } else {
        Poll::Pending
    }
}

/// Relays until both directions have closed, the link idles for `idle`, or `stop`
/// fires.
///
/// # Errors
/// The first I/O error (a reset, a TLS alert); both ends close when they drop.
pub async fn relay<Dev, B>(
    device: &mut Dev,
    backend: &mut B,
    idle: Option<Duration>,
    stop: &CancellationToken,
) -> io::Result<(Ending, Carried)>
where
    Dev: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Half::default();
    let mut down = Half::default();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let idle_sleep = tokio::time::sleep(idle.unwrap_or(Duration::MAX / 4));
    tokio::pin!(idle_sleep);
    let mut last_activity = Instant::now();
    let carried = |up: &Half, down: &Half| Carried {
        up: up.carried,
        down: down.carried,
    };
    while !(up.shut && down.shut) {
        let moved = poll_fn(|cx| {
            let a = up.pump(cx, device, backend)?;
            let b = down.pump(cx, backend, device)?;
            match (a, b) {
                (Poll::Pending, Poll::Pending) => Poll::Pending,
                _ => Poll::Ready(Ok::<(), io::Error>(())),
            }
        });
        tokio::select! {
            moved = moved => {
                moved?;
                if idle.is_some() {
                    last_activity = Instant::now();
                }
            }
            () = &mut idle_sleep, if idle.is_some() => {
                let deadline = last_activity + idle.expect("armed only with a timeout");
                if Instant::now() >= deadline {
                    return Ok((Ending::IdleTimeout, carried(&up, &down)));
                }
                idle_sleep.as_mut().reset(deadline);
            }
            () = &mut stopped => return Ok((Ending::Shutdown, carried(&up, &down))),
        }
    }
    Ok((Ending::Closed, carried(&up, &down)))
}
