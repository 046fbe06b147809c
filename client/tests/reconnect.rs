//! `Reconnect` against the real server in-process: the waits of the client reconnect
//! contract (SPEC section 11). The jitter after a lost connection, then full-jitter
//! exponential backoff after each failed attempt with caps of 1, 2, 4 ... 64, 120 s,
//! kept by a short connection and reset by one of 60 s.
//!
//! Tokio's clock is moved through the waits instead of waiting them: paused only for
//! each jump and resumed after it, as the server's own tests do. A clock left paused
//! would run ahead by itself whenever the runtime waits for a socket or the SQLite
//! thread, and fire HTTP and store timeouts that real time never would; so the clock is
//! moved only while the device sleeps, and its requests run in real time. Nor does
//! the server write to its store meanwhile: no heartbeats, and nothing expires (TTL
//! 300 s, deregistered before). A store call cut by its 5 s timeout in a jump would
//! drop the one connection of `sqlite::memory:`, and the database with it.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use switchboard::app::{self, Running};
use switchboard::cli::ServeArgs;
use switchboard::config::Config;
use switchboard_client::{
    Device, Error, Lease, Query, RECONNECT_BACKOFF_CAP, Reconnect, Registration, Registry, Wait,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long real work (a request, a connect) may take before a test gives up.
const PATIENCE: Duration = Duration::from_secs(15);

/// One jump of the clock: well under the shortest timeout that may be running (the
/// 500 ms connect timeout below, the server's 1 s and 5 s limits).
const STEP: Duration = Duration::from_millis(250);

/// What an attempt may take beyond its wait, in real time (loopback requests).
const SLACK: Duration = Duration::from_secs(1);

const JITTER_MS: u64 = 3_000;

async fn serve(extra: &str) -> (Running, String) {
    let args = ServeArgs {
        no_forward: true,
        ..ServeArgs::default()
    };
    let toml = format!("http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"\n{extra}");
    let config = Config::from_toml(&toml, &args).expect("valid config");
    let server = app::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    (server, url)
}

/// Moves tokio's clock forward by `by`, paused only for the jump itself.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Polls `fut` once: its output if it is ready.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = std::future::ready(()) => None,
    }
}

/// Runs `attempt`, which sleeps `due` before any I/O: moves the clock through `due` in
/// steps, then lets the attempt's requests run in real time. Its output, and how long
/// it took on tokio's clock. An attempt that did not wait ends before the clock moves,
/// so in less than `due`.
async fn moving_through<F: Future>(due: Duration, attempt: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let mut attempt = pin!(attempt);
    let mut moved = Duration::ZERO;
    // At most due / STEP + 1 jumps (due is at most 120 s).
    while moved < due {
        if let Some(out) = poll_once(&mut attempt).await {
            return (out, start.elapsed());
        }
        let step = STEP.min(due - moved);
        jump(step).await;
        moved += step;
    }
    let out = tokio::time::timeout(PATIENCE, attempt)
        .await
        .expect("the attempt ends in time");
    (out, start.elapsed())
}

/// Keeps a connection for `by` of tokio's clock (nothing else in flight).
async fn hold(by: Duration) {
    for _ in 0..by.as_millis().div_ceil(STEP.as_millis()) {
        jump(STEP).await;
    }
}

/// One attempt after the wait `reconnect` has due: the attempt's result, and the
/// wait checked against the time the attempt took.
async fn attempt(reconnect: &mut Reconnect) -> Result<(TcpStream, String), Error> {
    let due = reconnect.due().map_or(Duration::ZERO, Wait::duration);
    let (result, took) = moving_through(due, reconnect.attempt()).await;
    assert!(
        took >= due && took < due + SLACK,
        "the attempt took {took:?} after a wait of {due:?}"
    );
    assert_eq!(reconnect.due().is_some(), result.is_err(), "{result:?}");
    result.map(|(stream, server)| (stream, server.address))
}

/// A failed attempt, and the backoff it drew: below its cap, which it returns.
async fn failed_attempt(reconnect: &mut Reconnect) -> Duration {
    let failures = reconnect.backoff().failures();
    let err = attempt(reconnect).await.expect_err("no server answers");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert_eq!(reconnect.backoff().failures(), failures + 1);
    match reconnect.due() {
        Some(Wait::Backoff { wait, cap }) => {
            assert!(wait < cap, "backoff {wait:?} not below its cap {cap:?}");
            cap
        }
        other => panic!("a backoff is due after a failed attempt, not {other:?}"),
    }
}

/// The connection was lost: the jitter drawn is below the registry's.
fn lost(reconnect: &mut Reconnect) {
    match reconnect.lost() {
        Wait::Jitter { wait, limit } => {
            assert_eq!(limit, Duration::from_millis(JITTER_MS));
            assert!(wait < limit, "jitter {wait:?} not below {limit:?}");
        }
        other => panic!("a jitter is due after a lost connection, not {other:?}"),
    }
}

/// min(120 s, 1 s × 2^n).
fn cap(n: u32) -> Duration {
    Duration::from_secs(1 << n.min(7)).min(RECONNECT_BACKOFF_CAP)
}

/// A server devices connect to: accepts and keeps the connections until it dies.
struct Backend {
    address: String,
    accepted: mpsc::UnboundedReceiver<TcpStream>,
    accept: JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (tx, accepted) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send(stream).is_err() {
                    break;
                }
            }
        });
        Backend {
            address,
            accepted,
            accept,
        }
    }

    /// Registered without heartbeats for 300 s, longer than it stays here.
    async fn register(&self, admin: &Registry) -> Lease {
        let registration = Registration::new(self.address.clone()).ttl_secs(300);
        admin
            .register("default", &registration)
            .await
            .expect("register")
    }

    /// Closes every connection and stops listening: connecting is refused from now.
    async fn die(mut self, device_side: &mut TcpStream) {
        let accepted = tokio::time::timeout(PATIENCE, self.accepted.recv())
            .await
            .expect("the device's connection was accepted");
        assert!(accepted.is_some());
        self.accept.abort();
        let _ = self.accept.await;
        drop(accepted);
        drop(self.accepted);
        // The device sees its connection end.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, device_side.read(&mut byte))
            .await
            .expect("the device notices the close");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

fn device(url: &str) -> Reconnect {
    let registry = Registry::builder([url]).build().expect("registry");
    let device =
        Device::new(registry, Query::new("default")).connect_timeout(Duration::from_millis(500));
    Reconnect::new(device)
}

#[tokio::test]
async fn the_waits_are_the_jitter_then_a_growing_backoff_reset_by_60_s_connected() {
    let (server, url) = serve(&format!("[rebalance]\nreconnect_jitter_ms = {JITTER_MS}")).await;
    let admin = Registry::builder([url.clone()]).build().unwrap();
    let a = Backend::start().await;
    let lease_a = a.register(&admin).await;
    let mut reconnect = device(&url);

    // The first attempt waits nothing.
    assert_eq!(reconnect.due(), None);
    let (mut stream, chosen) = attempt(&mut reconnect).await.expect("A answers");
    assert_eq!(chosen, a.address);

    // A dies: the device waits below the jitter, then its attempts fail, each backoff
    // below min(120 s, 2^n s). First A is still listed and refuses; then it is gone
    // and the service has no server.
    a.die(&mut stream).await;
    lost(&mut reconnect);
    let mut caps = Vec::new();
    for n in 0..9 {
        if n == 5 {
            admin.deregister(&lease_a).await.unwrap();
        }
        caps.push(failed_attempt(&mut reconnect).await);
    }
    let expected: Vec<Duration> = (0..9).map(cap).collect();
    assert_eq!(caps, expected);
    assert_eq!(
        caps.iter().map(Duration::as_secs).collect::<Vec<_>>(),
        [1, 2, 4, 8, 16, 32, 64, 120, 120]
    );

    // B answers after the last backoff; its connection lasts 10 s: the count is kept.
    let b = Backend::start().await;
    let lease_b = b.register(&admin).await;
    let (mut stream, chosen) = attempt(&mut reconnect).await.expect("B answers");
    assert_eq!(chosen, b.address);
    hold(Duration::from_secs(10)).await;
    b.die(&mut stream).await;
    lost(&mut reconnect);
    assert_eq!(failed_attempt(&mut reconnect).await, RECONNECT_BACKOFF_CAP);
    assert_eq!(reconnect.backoff().failures(), 10);

    // C's connection lasts 60 s: the count starts again from 0, caps 1 s, 2 s ...
    let c = Backend::start().await;
    c.register(&admin).await;
    admin.deregister(&lease_b).await.unwrap();
    let (mut stream, chosen) = attempt(&mut reconnect).await.expect("C answers");
    assert_eq!(chosen, c.address);
    hold(Duration::from_secs(60)).await;
    c.die(&mut stream).await;
    lost(&mut reconnect);
    assert_eq!(reconnect.backoff().failures(), 0, "reset by 60 s connected");
    assert_eq!(failed_attempt(&mut reconnect).await, cap(0));
    assert_eq!(failed_attempt(&mut reconnect).await, cap(1));
    assert_eq!(failed_attempt(&mut reconnect).await, cap(2));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_attempt_without_a_lost_report_counts_the_connection_lost_then() {
    // A short jitter: the clock is moved through all of it in one jump.
    let (server, url) = serve("[rebalance]\nreconnect_jitter_ms = 200").await;
    let admin = Registry::builder([url.clone()]).build().unwrap();
    let mut reconnect = device(&url);
    assert_eq!(
        failed_attempt(&mut reconnect).await,
        cap(0),
        "no server yet"
    );
    let a = Backend::start().await;
    a.register(&admin).await;
    let (mut stream, _) = attempt(&mut reconnect).await.expect("A answers");
    hold(Duration::from_secs(60)).await;
    a.die(&mut stream).await;
    // Not told of the loss, the attempt counts it lost now: after 60 s connected,
    // so the count starts again; and it waits the jitter first.
    let limit = Duration::from_millis(200);
    let (result, took) = moving_through(limit, reconnect.attempt()).await;
    assert!(matches!(result, Err(Error::Connect(_))), "{result:?}");
    assert!(took < limit + SLACK, "{took:?}");
    assert_eq!(reconnect.backoff().failures(), 1, "reset, then one failure");
    assert!(matches!(reconnect.due(), Some(Wait::Backoff { cap: c, .. }) if c == cap(0)));
    server.stop().await.unwrap();
}

/// Moves the clock in steps, with real time between them for the requests in flight,
/// until `task` ends; its output and how long it took on tokio's clock.
async fn until_done<T>(task: JoinHandle<T>) -> (T, Duration) {
    let start = Instant::now();
    // Ten minutes of tokio's clock at most.
    for _ in 0..2_400 {
        if task.is_finished() {
            return (task.await.expect("task"), start.elapsed());
        }
        // Resumed, the clock runs at real time: 2 ms for the requests in flight.
        tokio::time::sleep(Duration::from_millis(2)).await;
        jump(Duration::from_millis(100)).await;
    }
    panic!("not done within 10 minutes of tokio's clock");
}

#[tokio::test]
async fn connect_keeps_trying_with_the_backoff_up_to_its_bound() {
    let (server, url) = serve(&format!("[rebalance]\nreconnect_jitter_ms = {JITTER_MS}")).await;
    let mut reconnect = device(&url);

    // No server: three attempts, with backoffs below 1 s and 2 s between them.
    let task = tokio::spawn(async move {
        let result = reconnect.connect(3).await;
        (reconnect, result)
    });
    let ((mut reconnect, result), took) = until_done(task).await;
    assert!(matches!(result, Err(Error::Connect(_))), "{result:?}");
    assert_eq!(reconnect.backoff().failures(), 3);
    assert!(took < cap(0) + cap(1) + 3 * Duration::from_millis(100) + SLACK);
    let Some(Wait::Backoff { wait, cap: due_cap }) = reconnect.due() else {
        panic!("the next backoff is due: {:?}", reconnect.due());
    };
    assert_eq!(due_cap, cap(2));

    // A server comes: the next call waits the backoff still due, then connects.
    let admin = Registry::builder([url]).build().unwrap();
    let backend = Backend::start().await;
    backend.register(&admin).await;
    let (connected, took) = moving_through(wait, reconnect.connect(10)).await;
    let (_stream, chosen) = connected.expect("the server answers");
    assert_eq!(chosen.address, backend.address);
    assert!(took >= wait && took < wait + SLACK, "{took:?} for {wait:?}");
    assert_eq!(reconnect.due(), None);
    assert_eq!(
        reconnect.backoff().failures(),
        3,
        "kept until 60 s connected"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connect_stops_at_an_error_that_trying_again_cannot_mend() {
    let (server, url) = serve("[tokens]\nread = \"reader\"").await;
    // No read token: 401, once, not ten times.
    let mut reconnect = device(&url);
    let err = reconnect.connect(10).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(reconnect.backoff().failures(), 1);
    assert!(matches!(reconnect.due(), Some(Wait::Backoff { .. })));
    server.stop().await.unwrap();
}
