//! The fd budget (issue 21): at a low open-file limit the forwarder refuses new
//! devices before it touches the reserve, so `/healthz` and `/servers` keep
//! answering while it is full; and EMFILE on a backend connect is our shortage, never
//! counted toward the backend's `max_fails`.
//!
//! An fd limit is a process's, so these run the real binary (`common::process`),
//! started under `prlimit` or squeezed by it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::Server;
use common::{Echo, Options, PATIENCE, echo_through, eventually};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Devices thrown at a server limited to [`LIMIT`] descriptors.
const DEVICES: usize = 700;
/// The server's `RLIMIT_NOFILE`, soft and hard (issue 21's figure).
const LIMIT: u64 = 400;
/// How soon the API must answer while the forwarder is full.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// This process holds every device and the echo backend's side of each relay: more
/// descriptors than a default soft limit of 1024 may allow.
fn raise_own_limit() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit to the hard limit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft >= DEVICES as u64 + 512,
        "this test needs {} descriptors, the hard limit allows {soft}",
        DEVICES + 512
    );
}

/// The sum of the samples of `name` whose labels include `want`, in Prometheus
/// text; 0 when there is none.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labelled = want
                .iter()
                .all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            (metric == name && labelled).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn forward_config() -> Options {
    Options {
        config: Some("[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"default\"\n".into()),
        forwards: 1,
        ..Options::default()
    }
}

/// `GET path` on a new connection, answered within [`ANSWER_WITHIN`]: its status and
/// how long it took. Asked from a thread of its own with blocking sockets, so the
/// time is the server's, not this test's busy runtime's.
async fn answered(s: &Server, path: &str) -> (u16, Duration) {
    let addr: SocketAddr = s
        .url("")
        .trim_start_matches("http://")
        .parse()
        .expect("http address");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let started = Instant::now();
        let mut conn = std::net::TcpStream::connect_timeout(&addr, ANSWER_WITHIN)
            .unwrap_or_else(|err| panic!("{path}: connect: {err}"));
        conn.set_read_timeout(Some(ANSWER_WITHIN))
            .expect("read timeout");
        conn.write_all(request.as_bytes()).expect("write request");
        let mut head = [0u8; 12];
        conn.read_exact(&mut head)
            .unwrap_or_else(|err| panic!("{path} did not answer within {ANSWER_WITHIN:?}: {err}"));
        let elapsed = started.elapsed();
        assert!(
            elapsed <= ANSWER_WITHIN,
            "{path} answered after {elapsed:?}"
        );
        let status = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {head:?}"));
        (status, elapsed)
    })
    .await
    .expect("request thread")
}

/// Whether the server closed `device` (EOF or reset) within [`PATIENCE`].
async fn closed(device: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(PATIENCE, device.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One device as firmware behaves: connects, and when the server closes the
/// connection, connects again at once, until `stop`; answers the connection it holds
/// then (a relayed one) and how many times it was turned away. Bounded by
/// [`MAX_ATTEMPTS`] and each connect's [`PATIENCE`].
async fn device(forward: SocketAddr, stop: CancellationToken) -> (Option<TcpStream>, u64) {
    let mut refused = 0;
    for _ in 0..MAX_ATTEMPTS {
        let connected = tokio::select! {
            () = stop.cancelled() => break,
            c = tokio::time::timeout(PATIENCE, TcpStream::connect(forward)) => c,
        };
        let Ok(Ok(mut conn)) = connected else {
            panic!("a device could not connect (the backlog is full): {connected:?}");
        };
        let mut buf = [0u8; 1];
        tokio::select! {
            () = stop.cancelled() => return (Some(conn), refused),
            // Closed by the server (nothing is sent, so nothing comes back otherwise).
            _ = conn.read(&mut buf) => refused += 1,
        }
    }
    (None, refused)
}

/// Connects a device may make before it gives up.
const MAX_ATTEMPTS: usize = 10_000;

#[tokio::test]
async fn a_full_forwarder_refuses_new_devices_and_the_api_keeps_answering() {
    raise_own_limit();
    let started = Instant::now();
    let echo = Echo::start().await;
    let mut s = Server::start_with(Options {
        nofile: Some(LIMIT),
        ..forward_config()
    });
    s.register(
        "default",
        json!({"address": echo.addr.to_string(), "ttl_secs": 300}),
    )
    .await;
    let forward = s.forward_addrs[0];
    let listener = forward.to_string();
    let by = |reason| [("listener", listener.as_str()), ("reason", reason)];
    let refused =
        |text: &str, reason| metric(text, "switchboard_forward_refused_total", &by(reason));

    let stop = CancellationToken::new();
    let devices: Vec<_> = (0..DEVICES)
        .map(|_| tokio::spawn(device(forward, stop.clone())))
        .collect();
    // Full: every descriptor of the budget held, and devices refused at it.
    let text = eventually("the forwarder full", || async {
        let text = s.metrics_text().await;
        let budget = metric(&text, "switchboard_forward_fd_budget", &[]);
        let held = metric(&text, "switchboard_forward_fds", &[]);
        (budget > 0.0 && held == budget && refused(&text, "fd_budget") > 0.0).then_some(text)
    })
    .await;

    // While it is full, and refused devices keep connecting again, the API answers.
    let (status, healthz) = answered(&s, "/healthz").await;
    assert_eq!(status, 200);
    let (status, servers) = answered(&s, "/servers").await;
    assert_eq!(status, 200);
    let budget = metric(&text, "switchboard_forward_fd_budget", &[]);
    eprintln!(
        "{DEVICES} devices at RLIMIT_NOFILE {LIMIT}, fd budget {budget}: /healthz answered \
         in {healthz:?}, /servers in {servers:?}"
    );

    stop.cancel();
    let mut held = Vec::new();
    let mut turned_away = 0;
    for d in devices {
        let (conn, refused) = d.await.expect("device task");
        held.extend(conn);
        turned_away += refused;
    }
    let text = s.metrics_text().await;
    // Every relay within the budget, two descriptors each; the other devices were
    // closed at once (a clean refusal, not a wait in the backlog).
    let relayed = echo.accepted();
    eprintln!(
        "relayed {relayed}, refused at the budget {}, turned away as the devices saw it \
         {turned_away}",
        refused(&text, "fd_budget")
    );
    assert!(
        relayed > 0 && relayed as f64 <= budget / 2.0,
        "{relayed} relays"
    );
    assert!(turned_away > 0 && refused(&text, "fd_budget") >= turned_away as f64);
    // The reserve was never reached: no backend connect ran out of descriptors, and
    // the backend was never counted failed.
    assert_eq!(
        refused(&text, "fd_shortage"),
        0.0,
        "a backend connect hit EMFILE"
    );
    let by_listener = [("listener", listener.as_str())];
    let failures = "switchboard_forward_connect_failures_total";
    assert_eq!(metric(&text, failures, &by_listener), 0.0);

    // The relays carry bytes; a connection the server had not yet taken when the
    // devices stopped is refused like the others.
    let mut echoed = 0;
    for conn in &mut held {
        let mut back = [0u8; 4];
        let io = async {
            conn.write_all(b"ping").await?;
            conn.read_exact(&mut back).await
        };
        match tokio::time::timeout(PATIENCE, io).await {
            Ok(Ok(_)) if &back == b"ping" => echoed += 1,
            Ok(_) => {}
            Err(_) => panic!("a device was neither relayed nor refused"),
        }
    }
    assert_eq!(echoed, relayed, "every relay echoes");

    // Once the devices leave, the budget is free again and the backend takes new
    // connections: it was never skipped.
    drop(held);
    eventually("the budget given back", || async {
        let text = s.metrics_text().await;
        (metric(&text, "switchboard_forward_fds", &[]) == 0.0).then_some(())
    })
    .await;
    assert_eq!(echo_through(forward, b"again").await, b"again");
    let taken_out: Vec<String> = s
        .logged()
        .iter()
        .filter(|l| l.contains("skipped for fail_timeout"))
        .cloned()
        .collect();
    assert!(
        taken_out.is_empty(),
        "the backend was taken out: {taken_out:?}"
    );
    // Said once a second at most, not once per refused device.
    let lines = s
        .logged()
        .iter()
        .filter(|l| l.contains("forwarder at its fd budget"))
        .count() as u64;
    let seconds = started.elapsed().as_secs();
    assert!(
        (1..=seconds + 1).contains(&lines),
        "{lines} warnings in {seconds} s for the refusals"
    );
}

/// The lowest descriptor number `pid` does not use: with the limit one above it, the
/// process can open exactly one more descriptor.
fn first_free_fd(pid: u32) -> u64 {
    let mut used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    used.sort_unstable();
    let mut free = 0;
    for fd in used {
        if fd != free {
            break;
        }
        free += 1;
    }
    free
}

/// Sets the soft `RLIMIT_NOFILE` of `pid` (the hard one stays: raising it again
/// would need a privilege).
fn set_soft_limit(pid: u32, soft: u64, hard: u64) {
    let set = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .is_ok_and(|st| st.success());
    assert!(set, "prlimit (util-linux) could not set the limit");
}

#[tokio::test]
async fn emfile_on_a_backend_connect_is_not_the_backends_failure() {
    let echo = Echo::start().await;
    let mut s = Server::start_with(Options {
        env: vec![(
            "RUST_LOG".into(),
            "info,switchboard::forwarder::workers=debug".into(),
        )],
        ..forward_config()
    });
    // Each worker thread opens its runtime's descriptors after the listener says it
    // listens: count them once every worker is up (one loop: no thread of its own).
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    if workers > 1 {
        s.wait_log_nth("forward worker ready", workers - 1);
    }
    s.register(
        "default",
        json!({"address": echo.addr.to_string(), "ttl_secs": 300}),
    )
    .await;
    let forward = s.forward_addrs[0];
    let listener = forward.to_string();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");

    // Room for one descriptor: the device is accepted, its backend socket is not.
    // More tries than max_fails (3).
    let pid = s.pid();
    set_soft_limit(pid, first_free_fd(pid) + 1, hard);
    for i in 0..5 {
        let mut device = TcpStream::connect(forward).await.expect("connect");
        assert!(closed(&mut device).await, "device {i} was not closed");
    }
    set_soft_limit(pid, hard, hard);

    let text = s.metrics_text().await;
    let shortage = [("listener", listener.as_str()), ("reason", "fd_shortage")];
    assert_eq!(
        metric(&text, "switchboard_forward_refused_total", &shortage),
        5.0,
        "every device counted as our shortage"
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_forward_connect_failures_total",
            &[("listener", listener.as_str())]
        ),
        0.0,
        "EMFILE counted as the backend's failure"
    );
    assert_eq!(echo.accepted(), 0);
    assert_eq!(echo_through(forward, b"after").await, b"after");
    assert_eq!(echo.accepted(), 1);
    let logged = s.logged();
    assert!(
        !logged
            .iter()
            .any(|l| l.contains("skipped for fail_timeout")),
        "the backend was taken out for fail_timeout"
    );
    assert!(
        logged
            .iter()
            .any(|l| l.contains("out of file descriptors connecting to a backend")),
        "the shortage was not logged"
    );
}
