//! The backend end of a relayed connection: a TCP socket, or a Unix stream socket for
//! a `unix:/path` static instance (nginx's `server unix:/path`).
//!
//! [`Stream`] is what the relay needs of either socket. The relay is generic over it,
//! so it is compiled once per kind: the TCP path pays for no dispatch, and a Unix
//! backend gets the same readiness loop, stash and `splice(2)` as a TCP one.
//! [`is_fd_shortage`] tells our own descriptor shortage from a backend's failure.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;

use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

use crate::registry::validate;

/// A connected backend.
#[derive(Debug)]
pub enum Backend {
    /// `host:port`.
    Tcp(TcpStream),
    /// `unix:/path`.
    Unix(UnixStream),
}

/// Connects to `host:port` over TCP, or to `unix:/path` over a Unix stream socket.
/// No timeout here: callers put their own around it.
///
/// # Errors
/// The connect's error: refused, unreachable, or a socket path that is missing.
pub async fn connect(address: &str) -> io::Result<Backend> {
    match validate::unix_socket_path(address) {
        Some(path) => UnixStream::connect(path).await.map(Backend::Unix),
        None => TcpStream::connect(address).await.map(Backend::Tcp),
    }
}

/// Whether `err` is the process (EMFILE) or the system (ENFILE) out of file
/// descriptors: our shortage, which says nothing about the backend, so it never
/// counts toward `max_fails` nor fails a health check.
pub fn is_fd_shortage(err: &io::Error) -> bool {
    let shortage = [nix::errno::Errno::EMFILE, nix::errno::Errno::ENFILE];
    err.raw_os_error()
        .is_some_and(|code| shortage.iter().any(|e| *e as i32 == code))
}

/// A connected stream socket as the relay drives it: readiness, and non-blocking I/O
/// on its descriptor (reads, `splice(2)` and `shutdown(2)` go through the fd itself).
pub trait Stream: AsFd + Sync {
    /// Waits until the socket is ready for `interest` (tokio's `ready`).
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;

    /// Runs `f` if ready for `interest`; "would block" clears that readiness
    /// (tokio's `try_io`).
    ///
    /// # Errors
    /// What `f` returns, or "would block" when the socket is not ready.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;

    /// Writes what the socket takes now (tokio's `try_write`).
    ///
    /// # Errors
    /// "Would block" when the socket takes nothing; a socket error.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

/// Both tokio stream types have these as inherent methods of the same shape.
macro_rules! impl_stream {
    ($t:ty) => {
        impl Stream for $t {
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
                <$t>::ready(self, interest)
            }

            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$t>::try_io(self, interest, f)
            }

            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
        }
    };
}

impl_stream!(TcpStream);
impl_stream!(UnixStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emfile_and_enfile_are_our_shortage_refusals_are_not() {
        assert!(is_fd_shortage(&io::Error::from_raw_os_error(24)), "EMFILE");
        assert!(is_fd_shortage(&io::Error::from_raw_os_error(23)), "ENFILE");
        let refused = io::Error::from_raw_os_error(nix::errno::Errno::ECONNREFUSED as i32);
        assert!(!is_fd_shortage(&refused));
        assert!(!is_fd_shortage(&io::Error::other("timed out")));
    }
}
