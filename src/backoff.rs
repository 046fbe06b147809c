//! Accepting with a pause after a failed `accept` (descriptors exhausted, say): 5 ms,
//! doubling up to 1 s, back to 5 ms after the next success. Every accept loop (HTTP
//! API, forward listeners, DNS over TCP) accepts through it, so none spins on an error
//! nor stops for good.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The first pause.
const MIN: Duration = Duration::from_millis(5);
/// The longest pause.
const MAX: Duration = Duration::from_secs(1);

/// One accept loop's backoff.
#[derive(Debug, Clone, Copy)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: MIN }
    }
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure pauses the shortest time again.
    pub fn succeeded(&mut self) {
        self.next = MIN;
    }

    /// An accept failed: the pause to take now (the next is twice as long, to 1 s).
    pub fn failed(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(MAX);
        now
    }

    /// The next connection on `listener`. A failed accept (ECONNABORTED for a client
    /// gone before it, EMFILE alike) is logged as `what`'s and paused on, and the
    /// listener goes on. `None` once `stop` completes, while waiting or pausing.
    ///
    /// `stop` is the caller's, made once (a `cancelled()` future pinned outside its
    /// loop), so a connection does not cost a new one.
    pub async fn accept<F: Future<Output = ()> + Unpin>(
        &mut self,
        listener: &TcpListener,
        stop: &mut F,
        what: &str,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = &mut *stop => return None,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(pair) => {
                    self.succeeded();
                    return Some(pair);
                }
                Err(err) => {
                    let pause = self.failed();
                    tracing::warn!(listener = what, %err, ?pause, "accept failed; backing off");
                    tokio::select! {
                        () = &mut *stop => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_second_and_starts_over_after_a_success() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), MIN);
    }
}
