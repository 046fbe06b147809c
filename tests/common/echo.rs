//! Echo backends on loopback, and a device that sends bytes and reads them back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::PATIENCE;

/// A tokio echo backend on loopback that counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    /// An echo server on `127.0.0.1:0`.
    pub async fn start() -> Echo {
        Echo::start_on("127.0.0.1:0").await
    }

    /// An echo server on `addr`.
    pub async fn start_on(addr: &str) -> Echo {
        let listener = TcpListener::bind(addr).await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops accepting (existing connections end with their tasks' sockets).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, writes `payload`, and reads the echo back (with a deadline).
pub async fn echo_through(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut sock = TcpStream::connect(addr).await.expect("connect forwarder");
    let mut got = vec![0u8; payload.len()];
    let io = async {
        let (mut r, mut w) = sock.split();
        let write = async {
            w.write_all(payload).await.expect("write");
        };
        let read = async { r.read_exact(&mut got).await.map(|_| ()) };
        let (_, read) = tokio::join!(write, read);
        read
    };
    tokio::time::timeout(PATIENCE, io)
        .await
        .expect("echo timed out")
        .expect("echo read failed");
    got
}
