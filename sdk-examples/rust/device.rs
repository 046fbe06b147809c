//! A device that resolves its service, connects to the first server that answers,
//! echoes a line every second, and keeps the client reconnect contract (SPEC section
//! 11) through the crate's `Reconnect`, never giving up:
//!
//! - An attempt: `GET /servers` and connect to the first server; when it does not
//!   answer, ask again and take the first server not yet tried (`Device::connect`).
//! - After a lost connection: wait a random `0..reconnect_jitter_ms` (from the last
//!   answer; 5000 before any), then attempt.
//! - After a failed attempt: wait a random `0..min(120 s, 1 s × 2^n)`, `n` the failed
//!   attempts so far, then attempt again; a connection that lasted 60 s resets `n`.
//!
//! ```text
//! cargo run --release -- serve &
//! cargo run -p switchboard-client --example device -- device-42
//! ```
//! Env: `SWITCHBOARD_URL` (default http://127.0.0.1:8080), `SERVICE` (default),
//! `ROUNDS` (echo rounds before exiting; default: run until Ctrl-C).

use std::time::Duration;

use switchboard_client::{Device, Query, Reconnect, Registry, Wait};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    let mut reconnect = Reconnect::new(device);

    let mut done = 0;
    // Forever unless ROUNDS is set: a failed attempt only backs off.
    while done < rounds {
        let (stream, server) = match reconnect.attempt().await {
            Ok(connected) => connected,
            Err(err) => {
                println!("cannot connect: {err}");
                if let Some(Wait::Backoff { wait, cap }) = reconnect.due() {
                    println!(
                        "backing off {} ms (up to {} ms)",
                        wait.as_millis(),
                        cap.as_millis()
                    );
                }
                continue;
            }
        };
        println!("connected to {}", server.address);
        let lost = echo(stream, &name, &mut done, rounds).await;
        if let Err(err) = lost {
            println!("connection lost: {err}");
            let wait = reconnect.lost();
            println!("reconnecting in {} ms", wait.duration().as_millis());
        }
    }
    Ok(())
}

/// Echoes a line a second until `done` reaches `rounds` (`Ok`) or the connection is
/// lost (`Err`).
async fn echo(stream: TcpStream, name: &str, done: &mut u64, rounds: u64) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    while *done < rounds {
        let line = format!("hello from {name} #{done}\n");
        stream.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut answer))
            .await
            .map_err(|_| std::io::Error::other("no echo within 5 s"))??;
        if answer != line {
            return Err(std::io::Error::other("closed or bad echo"));
        }
        println!("echo ok");
        *done += 1;
        if *done == rounds {
            break;
        }
        // Idle until the next round, but notice at once when the server closes.
        let mut byte = [0u8; 1];
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            read = stream.read(&mut byte) => return Err(match read {
                Ok(0) => std::io::Error::other("closed by the server"),
                Ok(_) => std::io::Error::other("bytes that are no echo"),
                Err(err) => err,
            }),
        }
    }
    Ok(())
}
