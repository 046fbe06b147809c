//! The fast path's framing on a raw socket: pipelining, heads and bodies in pieces,
//! the hand-off to hyper in the middle of a connection, `Connection: close`, the
//! header and idle timeouts, 413, graceful shutdown, and the request metrics. Each
//! answer is compared with what the server without the fast path sends.

mod common;

use std::net::SocketAddr;

use common::raw::{Conn, addr, fast_and_hyper, normalized};
use common::{Options, Server};

/// Sends `chunks` one write each on one connection; then reads `answers` responses.
async fn run(addr: SocketAddr, chunks: &[&[u8]], answers: usize) -> Vec<String> {
    let mut conn = Conn::open(addr).await;
    for chunk in chunks {
        conn.send(chunk).await;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        out.push(
            conn.response()
                .await
                .map_or("<closed>".into(), |r| normalized(&r)),
        );
    }
    out
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const SERVERS: &[u8] = b"GET /servers?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n";
const UNKNOWN_BEAT: &[u8] = b"PUT /v1/services/svc/instances/nope/heartbeat HTTP/1.1\r\nHost: x\r\nX-Lease: l\r\nContent-Length: 18\r\n\r\n{\"connections\": 1}";

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let (fast, slow) = fast_and_hyper("").await;
    let all = [HEALTHZ, SERVERS, UNKNOWN_BEAT, HEALTHZ].concat();
    let a = run(addr(&fast), &[&all], 4).await;
    assert_eq!(a, run(addr(&slow), &[&all], 4).await);
    assert!(a[2].starts_with("HTTP/1.1 404 Not Found"), "{}", a[2]);
    assert!(a[3].starts_with("HTTP/1.1 200 OK"), "{}", a[3]);
}

#[tokio::test]
async fn a_head_split_byte_by_byte_and_a_body_in_pieces() {
    let (fast, slow) = fast_and_hyper("").await;
    let bytes: Vec<&[u8]> = SERVERS.chunks(1).collect();
    let a = run(addr(&fast), &bytes, 1).await;
    assert_eq!(a, run(addr(&slow), &bytes, 1).await);
    assert!(a[0].starts_with("HTTP/1.1 200 OK"), "{}", a[0]);
    let at = UNKNOWN_BEAT.len() - 18;
    let pieces = [
        &UNKNOWN_BEAT[..at],
        &UNKNOWN_BEAT[at..at + 5],
        &UNKNOWN_BEAT[at + 5..at + 6],
        &UNKNOWN_BEAT[at + 6..],
    ];
    let a = run(addr(&fast), &pieces, 1).await;
    assert_eq!(a, run(addr(&slow), &pieces, 1).await);
    assert!(a[0].contains("unknown_instance"), "{}", a[0]);
}

#[tokio::test]
async fn other_requests_hand_the_connection_to_hyper_with_what_was_read() {
    let (fast, slow) = fast_and_hyper("").await;
    let metrics = b"GET /v1/services HTTP/1.1\r\nHost: x\r\n\r\n";
    // One by one, then all in one write (the hand-off with hot requests after it).
    let chunks: [&[u8]; 3] = [HEALTHZ, metrics, SERVERS];
    let a = run(addr(&fast), &chunks, 3).await;
    assert_eq!(a, run(addr(&slow), &chunks, 3).await);
    assert!(a.iter().all(|r| r.starts_with("HTTP/1.1 200 OK")), "{a:?}");
    let all = [HEALTHZ, metrics, SERVERS, HEALTHZ].concat();
    let a = run(addr(&fast), &[&all], 4).await;
    assert_eq!(a, run(addr(&slow), &[&all], 4).await);
    assert!(a.iter().all(|r| r.starts_with("HTTP/1.1 200 OK")), "{a:?}");
}

#[tokio::test]
async fn connection_close_and_http_1_0_close_after_the_answer() {
    let (fast, slow) = fast_and_hyper("").await;
    for request in [
        &b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"[..],
        b"GET /servers HTTP/1.0\r\n\r\n",
    ] {
        let mut answers = Vec::new();
        for server in [&fast, &slow] {
            let mut conn = Conn::open(addr(server)).await;
            conn.send(request).await;
            let answer = normalized(&conn.response().await.expect("an answer"));
            assert!(conn.closes().await, "kept open after {answer}");
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1]);
    }
}

#[tokio::test]
async fn the_header_and_idle_timeouts_still_close() {
    let fast = Server::start_with(Options {
        config: Some("http_header_timeout_secs = 1\nhttp_idle_timeout_secs = 2\n".into()),
        ..Options::default()
    })
    .await;
    let mut half = Conn::open(addr(&fast)).await;
    half.send(b"GET /healthz HTTP/1.1\r\nHo").await;
    let mut idle = Conn::open(addr(&fast)).await;
    idle.send(HEALTHZ).await;
    assert!(idle.response().await.is_some());
    let started = std::time::Instant::now();
    assert!(half.closes().await, "a half-sent head was kept open");
    assert!(idle.closes().await, "an idle connection was kept open");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed before its timeout"
    );
}

#[tokio::test]
async fn an_oversize_body_is_answered_413_as_before() {
    let (fast, slow) = fast_and_hyper("").await;
    let body = vec![b' '; 64 * 1024 + 1];
    let head = format!(
        "PUT /v1/services/svc/instances/x/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let request = [head.as_bytes(), &body].concat();
    let a = run(addr(&fast), &[&request], 1).await;
    assert_eq!(a, run(addr(&slow), &[&request], 1).await);
    assert!(a[0].starts_with("HTTP/1.1 413"), "{}", a[0]);
    assert!(a[0].contains("payload_too_large"), "{}", a[0]);
}

#[tokio::test]
async fn a_blocking_read_in_flight_answers_at_shutdown_and_says_close() {
    let fast = Server::start().await;
    let version = fast.version("default").await;
    let mut conn = Conn::open(addr(&fast)).await;
    let request = format!("GET /servers?since={version}&wait_secs=30 HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.send(request.as_bytes()).await;
    // Another connection's answer: by then this one's request was read and is held.
    assert_eq!(fast.get("/healthz").await.0, 200);
    let (_, answer) = tokio::join!(fast.stop(), conn.response());
    let answer = normalized(&answer.expect("answered at shutdown"));
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(conn.closes().await);
}

#[tokio::test]
async fn fast_answers_are_counted_by_route_method_and_status() {
    let fast = Server::start().await;
    let all = [HEALTHZ, HEALTHZ, UNKNOWN_BEAT].concat();
    run(addr(&fast), &[&all], 3).await;
    let text = fast.metrics_text().await;
    let count = |route: &str, status: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("switchboard_http_request_duration_seconds_count")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    // At least: the recorder is the process's, and other tests here count too.
    assert!(count("/healthz", "200") >= Some(2), "{text}");
    assert!(
        count("/v1/services/{service}/instances/{id}/heartbeat", "404") >= Some(1),
        "{text}"
    );
}
