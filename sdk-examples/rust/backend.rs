//! A tokio echo backend that joins the fleet with the switchboard client crate.
//!
//! It counts its live connections, heartbeats that count, and honours `shed` by
//! closing its oldest idle connections (idle: nothing received for a while), so
//! those devices reconnect and land on a less loaded server.
//!
//! ```text
//! cargo run --release -- serve &
//! cargo run -p switchboard-client --example backend -- 127.0.0.1:6666
//! ```
//! Env: `SWITCHBOARD_URL` (default http://127.0.0.1:8080), `SERVICE` (default).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_client::{Backend, Registration, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A connection counts as idle after this long without a byte from its device.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Live connections: id -> (last activity, a way to close it).
type Conns = Arc<Mutex<BTreeMap<u64, (Instant, Option<oneshot::Sender<()>>)>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6666".into());
    let url = std::env::var("SWITCHBOARD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let service = std::env::var("SERVICE").unwrap_or_else(|_| "default".into());
    let listener = TcpListener::bind(&listen).await?;
    let address = listener.local_addr()?.to_string();
    println!("listening on {address}");

    let live = Arc::new(AtomicU64::new(0));
    let conns: Conns = Arc::default();
    let registry = Registry::builder([url]).build()?;
    let registration = Registration::new(address).ttl_secs(3);
    let mut backend = Backend::start(registry, service, registration, Arc::clone(&live));
    let lease = backend.registered(Duration::from_secs(30)).await?;
    println!("registered {}", lease.id);

    let mut shed = backend.take_shed().expect("first take");
    let shedding = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Some(n) = shed.recv().await {
            let closed = close_oldest_idle(&shedding, n);
            println!("shed {n}: closed {closed}");
        }
    });

    let mut next_id = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                next_id += 1;
                let (close, closed) = oneshot::channel();
                conns.lock().unwrap().insert(next_id, (Instant::now(), Some(close)));
                live.fetch_add(1, Ordering::Relaxed);
                println!("accepted {peer}");
                tokio::spawn(echo(stream, next_id, Arc::clone(&conns), Arc::clone(&live), closed));
            }
        }
    }
    backend.shutdown().await?;
    println!("deregistered");
    Ok(())
}

/// Echoes until the device closes or the backend sheds the connection.
async fn echo(
    mut stream: tokio::net::TcpStream,
    id: u64,
    conns: Conns,
    live: Arc<AtomicU64>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            _ = &mut closed => break,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(entry) = conns.lock().unwrap().get_mut(&id) {
                        entry.0 = Instant::now();
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    conns.lock().unwrap().remove(&id);
    live.fetch_sub(1, Ordering::Relaxed);
}

/// Closes up to `n` connections idle for [`IDLE_AFTER`], oldest first.
fn close_oldest_idle(conns: &Conns, n: u64) -> u64 {
    let mut conns = conns.lock().unwrap();
    let mut idle: Vec<(Instant, u64)> = conns
        .iter()
        .filter(|(_, (last, close))| close.is_some() && last.elapsed() >= IDLE_AFTER)
        .map(|(id, (last, _))| (*last, *id))
        .collect();
    idle.sort();
    let mut closed = 0;
    for (_, id) in idle
        .into_iter()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
    {
        if let Some(close) = conns.get_mut(&id).and_then(|entry| entry.1.take()) {
            let _ = close.send(());
            closed += 1;
        }
    }
    closed
}
