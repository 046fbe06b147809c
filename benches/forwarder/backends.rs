//! The echo backends, tokio servers inside the bench process on the clients' runtime:
//! the TCP echo (until the client closes, or closing after 16 bytes for phase 2b), the
//! UDP echo that counts what it received (its port also accepts and closes TCP, for
//! Switchboard's static health check), and the one 16-byte echo a client makes
//! through a setup.
//!
//! Must not start proxies or count CPU: `proxy.rs` and the phases do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Bytes each connection echoes in the rate and memory tests.
pub const MSG: [u8; 16] = *b"switchboard-16b!";

/// Echoes every byte back until the peer closes, or, with `close_after`, closes once
/// that many bytes were echoed (bounded in accepts and reads).
pub async fn echo_server(listener: TcpListener, close_after: Option<usize>) {
    for _ in 0..100_000_000u64 {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut sock = sock;
            let mut buf = vec![0u8; 16 * 1024];
            let mut echoed = 0;
            for _ in 0..10_000_000u64 {
                let n = match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if sock.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                echoed += n;
                if close_after.is_some_and(|limit| echoed >= limit) {
                    break;
                }
            }
        });
    }
}

/// Connects to `addr`, writes `MSG` and reads its echo back; the connection stays open.
pub async fn echo_once(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&MSG).await?;
    let mut back = [0u8; MSG.len()];
    s.read_exact(&mut back).await?;
    if back != MSG {
        bail!("echo mismatch");
    }
    Ok(s)
}

/// A UDP echo backend: every datagram goes back to its sender. Its port also has a TCP
/// listener that accepts and closes, for Switchboard's static health check.
pub struct UdpEcho {
    pub addr: SocketAddr,
    /// Datagrams received so far.
    pub received: Arc<AtomicU64>,
}

impl UdpEcho {
    /// Binds a UDP port whose TCP twin is free too and serves both.
    pub async fn start() -> Result<UdpEcho> {
        // A UDP port whose TCP twin is free too (bounded tries).
        for _ in 0..50 {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            let addr = socket.local_addr()?;
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let received = Arc::new(AtomicU64::new(0));
            tokio::spawn(udp_echo(socket, Arc::clone(&received)));
            tokio::spawn(async move {
                for _ in 0..100_000_000u64 {
                    if tcp.accept().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            });
            return Ok(UdpEcho { addr, received });
        }
        bail!("no loopback port free for both UDP and TCP")
    }
}

async fn udp_echo(socket: UdpSocket, received: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 65_535];
    for _ in 0..10_000_000_000u64 {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        received.fetch_add(1, Ordering::Relaxed);
        let _ = socket.send_to(&buf[..n], from).await;
    }
}
