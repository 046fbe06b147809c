//! The registered fleet's setup: registering instances of the service `bench` over
//! several connections at once (each registration waits for its fsync), the load
//! shapes, and one heartbeat per instance to give every instance its shape's load.
//!
//! Owns no measured phase: `wrk.rs` and `scale.rs` load what this registered.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::support::http::{self, Conn, JSON};
use crate::{REQUEST_TIMEOUT, SERVICE};

/// TTL of every instance: the largest SPEC allows, so none expires during a run.
const TTL_SECS: u64 = 300;
/// Tries of one registration or heartbeat before it counts as failed.
const TRIES: usize = 3;
/// How often registration prints its progress.
const PROGRESS: Duration = Duration::from_secs(15);

/// How the instances' connection counts are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Instance `i` holds `i % 997` connections.
    Uneven,
    /// The last tenth registered hold 0 (empty newcomers), the rest 1,000.
    ScaleOut,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Uneven, Shape::ScaleOut];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Uneven => "uneven",
            Shape::ScaleOut => "scale-out",
        }
    }

    /// The connections instance `i` of `n` reports.
    pub fn connections(self, i: usize, n: usize) -> u64 {
        match self {
            Shape::Uneven => (i % 997) as u64,
            Shape::ScaleOut if i >= n - n / 10 => 0,
            Shape::ScaleOut => 1_000,
        }
    }
}

/// A registered instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub lease: String,
}

/// The instances registered so far, in registration order.
pub struct Fleet {
    pub addr: SocketAddr,
    pub list: Vec<Instance>,
    /// Registrations that failed after [`TRIES`], and the first error.
    pub failed: usize,
    pub first_error: Option<String>,
}

/// The full request of one heartbeat.
pub fn heartbeat(addr: SocketAddr, inst: &Instance, connections: u64, out: &mut Vec<u8>) {
    let body = format!(r#"{{"connections":{connections}}}"#);
    let _ = write!(
        out,
        "PUT /v1/services/{SERVICE}/instances/{}/heartbeat HTTP/1.1\r\nHost: {addr}\r\n\
         X-Lease: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        inst.id,
        inst.lease,
        body.len()
    );
}

/// `req` on `conn` until a 2xx answer, at most [`TRIES`] times; the answer's body.
async fn send(conn: &mut Option<Conn>, addr: SocketAddr, req: &[u8]) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for _ in 0..TRIES {
        match http::call(conn, addr, req, true, REQUEST_TIMEOUT).await {
            Ok(a) if (200..300).contains(&a.status) => return Ok(a.body),
            Ok(a) => {
                last = format!("HTTP {}: {}", a.status, String::from_utf8_lossy(&a.body));
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

impl Fleet {
    pub fn new(addr: SocketAddr) -> Fleet {
        Fleet {
            addr,
            list: Vec::new(),
            failed: 0,
            first_error: None,
        }
    }

    /// Registers instances until `n` are (addresses `10.x.y.z:6666` by index) over
    /// `conns` connections, for at most `limit`. Answers how long it took.
    pub async fn register_up_to(
        &mut self,
        n: usize,
        conns: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let (from, addr) = (self.list.len() + self.failed, self.addr);
        if from >= n {
            return Ok(Duration::ZERO);
        }
        let next = Arc::new(AtomicUsize::new(from));
        let started = Instant::now();
        let deadline = started + limit;
        let mut tasks = Vec::with_capacity(conns);
        for _ in 0..conns.clamp(1, n - from) {
            let next = Arc::clone(&next);
            tasks.push(tokio::spawn(async move {
                let mut conn = None;
                let mut got = Vec::new();
                let mut errors = (0usize, None::<String>);
                let path = format!("/v1/services/{SERVICE}/instances");
                for _ in 0..n {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || Instant::now() >= deadline {
                        break;
                    }
                    let body = format!(
                        r#"{{"address":"{}","ttl_secs":{TTL_SECS}}}"#,
                        http::instance_address(i)
                    );
                    let req = http::request("POST", &path, addr, &[JSON], body.as_bytes());
                    let outcome = send(&mut conn, addr, &req)
                        .await
                        .and_then(|b| http::parse_registration(&b));
                    match outcome {
                        Ok((id, lease)) => got.push((i, Instance { id, lease })),
                        Err(err) => {
                            errors.0 += 1;
                            errors.1.get_or_insert(err);
                        }
                    }
                }
                (got, errors)
            }));
        }
        let progress = tokio::spawn(async move {
            for _ in 0..100_000 {
                tokio::time::sleep(PROGRESS).await;
                let done = next.load(Ordering::Relaxed).min(n) - from;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "  registering: {done}/{} in {secs:.0} s ({:.0}/s)",
                    n - from,
                    done as f64 / secs
                );
            }
        });
        let mut got = Vec::with_capacity(n - from);
        for task in tasks {
            let (part, (failed, first)) = task.await.context("registration worker")?;
            got.extend(part);
            self.failed += failed;
            if self.first_error.is_none() {
                self.first_error = first;
            }
        }
        progress.abort();
        got.sort_unstable_by_key(|(i, _)| *i);
        self.list.extend(got.into_iter().map(|(_, inst)| inst));
        if self.list.is_empty() {
            bail!("no instance registered: {:?}", self.first_error);
        }
        Ok(started.elapsed())
    }

    /// One heartbeat per instance, over `conns` connections, with `shape`'s load.
    /// Answers how long it took and how many failed.
    pub async fn set_loads(&self, shape: Shape, conns: usize) -> anyhow::Result<(Duration, usize)> {
        let (n, addr) = (self.list.len(), self.addr);
        let list = Arc::new(self.list.clone());
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(conns);
        for w in 0..conns.clamp(1, n) {
            let list = Arc::clone(&list);
            tasks.push(tokio::spawn(async move {
                let (mut conn, mut req, mut failed) = (None, Vec::with_capacity(512), 0);
                for (i, inst) in list.iter().enumerate().skip(w).step_by(conns) {
                    req.clear();
                    heartbeat(addr, inst, shape.connections(i, n), &mut req);
                    failed += usize::from(send(&mut conn, addr, &req).await.is_err());
                }
                failed
            }));
        }
        let mut failed = 0;
        for task in tasks {
            failed += task.await.context("heartbeat worker")?;
        }
        Ok((started.elapsed(), failed))
    }
}
