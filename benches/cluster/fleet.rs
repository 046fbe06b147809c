//! The bench's fleet as real backends behave: each instance registers through a node
//! and heartbeats from the moment its registration answered, every
//! [`HEARTBEAT_EVERY`], its `k`-th heartbeat to node `(i + k) % nodes`. Owns
//! registration, the heartbeat schedule and the answer tallies; measures nothing else.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{HEARTBEAT_EVERY, LATE, REGISTER_DEADLINE, SERVICE, TTL_SECS, call, request};
use crate::support::http::{self, Conn};
use crate::support::report::{Tally, micros};

/// A registered instance of the fleet.
#[derive(Debug)]
pub struct Member {
    /// Heartbeat path.
    path: String,
    lease: String,
}

/// How the registration of the fleet went.
pub struct Registration {
    pub registered: usize,
    pub failures: u64,
    pub first_error: Option<String>,
}

/// One planned heartbeat.
struct Job {
    member: Arc<Member>,
    index: u32,
    round: u32,
    due: tokio::time::Instant,
}

/// Heartbeat answers of one node.
#[derive(Debug, Default, Clone)]
pub struct BeatTally {
    /// 200 answers count as ok; latencies in microseconds.
    pub tally: Tally,
    pub max_lag: Duration,
    pub late: u64,
}

impl BeatTally {
    fn record(&mut self, outcome: &Result<u16, String>, latency: Duration, lag: Duration) {
        match outcome {
            Ok(status) => {
                self.tally
                    .note_answer(*status, *status == 200, micros(latency), usize::MAX)
            }
            Err(err) => self.tally.note_error(err.clone()),
        }
        self.max_lag = self.max_lag.max(lag);
        if lag > LATE {
            self.late += 1;
        }
    }

    /// Answers with this status (200 is the ok count).
    pub fn status(&self, status: u16) -> u64 {
        if status == 200 {
            self.tally.ok
        } else {
            self.tally.statuses.get(&status).copied().unwrap_or(0)
        }
    }
}

/// Heartbeat answers of one node: inside the measured window, and over the whole run.
#[derive(Default)]
pub struct NodeStats {
    pub window: Mutex<BeatTally>,
    pub total: Mutex<BeatTally>,
}

impl NodeStats {
    pub fn window(&self) -> BeatTally {
        self.window.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> BeatTally {
        self.total.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// The heartbeating fleet: a scheduler that learns of each registration as it is
/// answered, and `conns` keep-alive connections per node sending what it plans.
pub struct Beats {
    pub stats: Arc<Vec<NodeStats>>,
    /// True while the measured window runs.
    pub measuring: Arc<AtomicBool>,
    registered: mpsc::Sender<(u32, Arc<Member>, tokio::time::Instant)>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Beats {
    /// Starts the scheduler and the senders; `max_rounds` heartbeats per instance at most.
    pub fn start(addrs: &[SocketAddr], conns: usize, instances: usize, max_rounds: u32) -> Beats {
        let stop = CancellationToken::new();
        let measuring = Arc::new(AtomicBool::new(false));
        let stats: Arc<Vec<NodeStats>> =
            Arc::new((0..addrs.len()).map(|_| NodeStats::default()).collect());
        let mut tasks = Vec::new();
        let mut senders = Vec::new();
        for (node, &addr) in addrs.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Job>(instances.max(16));
            senders.push(tx);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..conns {
                tasks.push(tokio::spawn(beat_worker(
                    addr,
                    Arc::clone(&rx),
                    Arc::clone(&stats),
                    node,
                    Arc::clone(&measuring),
                    stop.clone(),
                )));
            }
        }
        let (registered, from_registration) = mpsc::channel(instances.max(16));
        tasks.push(tokio::spawn(schedule(
            from_registration,
            senders,
            instances,
            max_rounds,
            stop.clone(),
        )));
        Beats {
            stats,
            measuring,
            registered,
            stop,
            tasks,
        }
    }

    /// Stops sending and waits (bounded) for the senders to finish their request.
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        drop(self.registered);
        for task in self.tasks {
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }
}

/// Plans each instance's heartbeats from its registration's answer on, and hands each
/// to its node's queue when due; ends on `stop`, or once registration is over and
/// every instance had `max_rounds`.
async fn schedule(
    mut registered: mpsc::Receiver<(u32, Arc<Member>, tokio::time::Instant)>,
    senders: Vec<mpsc::Sender<Job>>,
    instances: usize,
    max_rounds: u32,
    stop: CancellationToken,
) {
    let nodes = senders.len();
    let mut members: Vec<Option<Arc<Member>>> = vec![None; instances];
    let mut due: BinaryHeap<Reverse<(tokio::time::Instant, u32, u32)>> = BinaryHeap::new();
    let mut registering = true;
    // Bounded: every instance is planned at most `max_rounds` times.
    let most = instances as u64 * (u64::from(max_rounds) + 1) + 1;
    for _ in 0..most {
        if !registering && due.is_empty() {
            return;
        }
        let next = due.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            reg = registered.recv(), if registering => match reg {
                Some((index, member, answered)) => {
                    if let Some(slot) = members.get_mut(index as usize) {
                        *slot = Some(member);
                        due.push(Reverse((answered + HEARTBEAT_EVERY, index, 1)));
                    }
                }
                None => registering = false,
            },
            () = sleep_until_some(next) => {
                let Some(Reverse((at, index, round))) = due.pop() else { continue };
                let Some(member) = members.get(index as usize).and_then(Clone::clone) else {
                    continue;
                };
                let node = (index as usize + round as usize) % nodes;
                let job = Job { member, index, round, due: at };
                tokio::select! {
                    () = stop.cancelled() => return,
                    sent = senders[node].send(job) => if sent.is_err() { return },
                }
                if round < max_rounds {
                    due.push(Reverse((at + HEARTBEAT_EVERY, index, round + 1)));
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends the heartbeats queued for one node on one keep-alive connection.
async fn beat_worker(
    addr: SocketAddr,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    stats: Arc<Vec<NodeStats>>,
    node: usize,
    measuring: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    loop {
        let job = tokio::select! {
            () = stop.cancelled() => return,
            job = async { queue.lock().await.recv().await } => job,
        };
        let Some(job) = job else { return };
        let connections = (u64::from(job.index) * 37 + u64::from(job.round) * 11) % 500;
        let body = format!("{{\"connections\":{connections}}}");
        let req = request(
            "PUT",
            &job.member.path,
            &[("X-Lease", &job.member.lease)],
            body.as_bytes(),
        );
        let in_window = measuring.load(Ordering::Relaxed);
        let sent = tokio::time::Instant::now();
        let lag = sent.saturating_duration_since(job.due);
        let outcome = call(&mut conn, addr, &req).await.map(|a| a.status);
        let latency = sent.elapsed();
        if let Ok(mut t) = stats[node].total.lock() {
            t.record(&outcome, latency, lag);
        }
        if in_window && let Ok(mut t) = stats[node].window.lock() {
            t.record(&outcome, latency, lag);
        }
    }
}

/// Registers `instances` instances, instance `i` on node `i % nodes`, over `conns`
/// connections per node; each one answered is handed to `beats` at once, so it
/// heartbeats from then on.
pub async fn register_fleet(
    instances: usize,
    conns: usize,
    addrs: &[SocketAddr],
    beats: &Beats,
) -> anyhow::Result<Registration> {
    let count: Arc<Mutex<(usize, u64, Option<String>)>> = Arc::new(Mutex::new((0, 0, None)));
    let mut tasks = Vec::new();
    let nodes = addrs.len();
    for (node, &addr) in addrs.iter().enumerate() {
        for w in 0..conns {
            let count = Arc::clone(&count);
            let to_beats = beats.registered.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let mut i = node + w * nodes;
                while i < instances {
                    let body = format!(
                        "{{\"address\":\"{}\",\"ttl_secs\":{TTL_SECS}}}",
                        http::instance_address(i)
                    );
                    let path = format!("/v1/services/{SERVICE}/instances");
                    let req = request("POST", &path, &[], body.as_bytes());
                    let mut outcome = Err("not tried".to_owned());
                    for _ in 0..3 {
                        outcome = call(&mut conn, addr, &req).await.and_then(|a| {
                            if a.status == 200 || a.status == 201 {
                                http::parse_registration(&a.body)
                            } else {
                                Err(format!(
                                    "status {}: {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                ))
                            }
                        });
                        if outcome.is_ok() {
                            break;
                        }
                    }
                    let answered = tokio::time::Instant::now();
                    match outcome {
                        Ok((id, lease)) => {
                            let path = format!("/v1/services/{SERVICE}/instances/{id}/heartbeat");
                            let member = Arc::new(Member { path, lease });
                            let index = u32::try_from(i).unwrap_or(u32::MAX);
                            let _ = to_beats.send((index, member, answered)).await;
                            if let Ok(mut c) = count.lock() {
                                c.0 += 1;
                            }
                        }
                        Err(err) => {
                            if let Ok(mut c) = count.lock() {
                                c.1 += 1;
                                c.2.get_or_insert(err);
                            }
                        }
                    }
                    i += nodes * conns;
                }
            }));
        }
    }
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::time::timeout(REGISTER_DEADLINE, all)
        .await
        .map_err(|_| anyhow!("registering the fleet took over {REGISTER_DEADLINE:?}"))?;
    let (registered, failures, first_error) = count.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(Registration {
        registered,
        failures,
        first_error,
    })
}

/// Seconds until every node lists `expected` live instances of the fleet, polled up to
/// `deadline`.
pub async fn converge(addrs: &[SocketAddr], expected: u64, deadline: Duration) -> Option<f64> {
    let started = Instant::now();
    let mut done = vec![false; addrs.len()];
    while started.elapsed() < deadline {
        for (i, &addr) in addrs.iter().enumerate() {
            if !done[i]
                && let Ok(view) = super::probes::services_view(addr).await
            {
                done[i] = view.get(SERVICE).is_some_and(|s| s.live >= expected);
            }
        }
        if done.iter().all(|&d| d) {
            return Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
