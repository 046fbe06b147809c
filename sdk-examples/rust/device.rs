//! A device that resolves its service, connects to the first server that answers,
//! echoes a line every second, and reconnects (after the registry's jitter) when its
//! connection is lost.
//!
//! ```text
//! cargo run --release -- serve &
//! cargo run -p switchboard-client --example device -- device-42
//! ```
//! Env: `SWITCHBOARD_URL` (default http://127.0.0.1:8080), `SERVICE` (default),
//! `ROUNDS` (echo rounds before exiting; default: run until Ctrl-C).

use std::time::Duration;

use switchboard_client::{Device, Query, Registry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "device-1".into());
    let url = std::env::var("SWITCHBOARD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let service = std::env::var("SERVICE").unwrap_or_else(|_| "default".into());
    let rounds: u64 = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(u64::MAX);
    let registry = Registry::builder([url]).build()?;
    let device = Device::new(registry, Query::new(service).key(name.clone()));

    let (mut stream, mut server) = device.connect().await?;
    println!("connected to {}", server.address);
    let mut done = 0;
    while done < rounds {
        let line = format!("hello from {name} #{done}\n");
        let mut answer = String::new();
        let ok = async {
            stream.write_all(line.as_bytes()).await?;
            let mut reader = BufReader::new(&mut stream);
            tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut answer))
                .await
                .map_err(std::io::Error::other)?
        }
        .await;
        match ok {
            Ok(n) if n > 0 && answer == line => {
                println!("echo ok from {}", server.address);
                done += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => {
                println!("lost {}; reconnecting", server.address);
                (stream, server) = device.reconnect().await?;
                println!("connected to {}", server.address);
            }
        }
    }
    Ok(())
}
