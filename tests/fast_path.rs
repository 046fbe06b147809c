//! The hand-written path of the hot routes answers byte for byte as hyper and axum
//! do: generated requests on `/healthz`, `/servers` and heartbeats (good and bad
//! queries, bodies, leases, tokens, methods, HTTP/1.0 and 1.1, `Connection`
//! headers) go to a server with the fast path and to one without, whose registries
//! were restored from copies of one store (same ids, leases and versions).

mod common;

use std::path::Path;

use common::raw::{addr, exchange, fast_and_hyper};
use common::{Options, Registered, Server};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const CONFIG: &str = "[tokens]\nread = \"rt\"\n[rebalance]\nenabled = false\n";

/// Copies a SQLite store (and its journal files, if any).
fn copy_store(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let source = format!("{}{suffix}", from.display());
        if Path::new(&source).exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).expect("copy store");
        }
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    target: String,
    version: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {}\r\nHost: x\r\n",
            self.method, self.target, self.version
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || self.method == "PUT" {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

const PARAMS: &[&str] = &[
    "service=svc",
    "service=default",
    "service=nosuch",
    "service=Bad!",
    "service=sv%63",
    "limit=1",
    "limit=2",
    "limit=100",
    "limit=0",
    "limit=101",
    "limit=x",
    "limit=",
    "key=dev1",
    "key=dev2",
    "key=",
    "zone=a",
    "zone=b",
    "zone=%%",
    "tag=v2",
    "tag=",
    "since=1&wait_secs=1",
    "since=x",
    "wait_secs=0",
    "wait_secs=61",
    "since=9007199254740992",
    "limit=1&limit=2",
    "foo=bar",
    "service",
    "limit=3+",
];

fn servers_target() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(PARAMS), 0..4),
    )
        .prop_map(|(mark, params)| {
            if params.is_empty() {
                if mark {
                    "/servers?".into()
                } else {
                    "/servers".into()
                }
            } else {
                format!("/servers?{}", params.join("&"))
            }
        })
}

fn body(instances: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0..instances, 0u64..1000)
            .prop_map(|(k, r)| format!("{{\"connections\": {}}}", (k as u64 + 1) * 10_000 + r).into_bytes()),
        1 => proptest::sample::select(vec![
            "{}", "", "  \n", "{\"connections\": -1}", "{\"connections\": \"x\"}",
            "{\"foo\": 1}", "{\"connections\": 1} x", "not json", "null", "[]",
            "{\"connections\": 18446744073709551616}",
        ]).prop_map(|b| b.as_bytes().to_vec()),
        1 => Just({
            let mut b = b"{\"connections\": 7}".to_vec();
            b.resize(64 * 1024, b' ');
            b
        }),
        1 => Just(vec![b' '; 64 * 1024 + 1]),
    ]
}

fn requests(beats: Vec<Registered>) -> impl Strategy<Value = Request> {
    let n = beats.len();
    let heartbeat = (
        0..n + 3,
        proptest::sample::select(vec!["right", "wrong", "missing", "empty"]),
        body(n),
        prop_oneof![8 => Just("PUT"), 1 => Just("POST"), 1 => Just("GET")],
    )
        .prop_map(move |(k, lease, body, method)| {
            let (service, id, right) = match k.checked_sub(n) {
                None => (
                    beats[k].service.clone(),
                    beats[k].id.clone(),
                    beats[k].lease.clone(),
                ),
                Some(0) => ("svc".into(), "nosuchid".into(), "x".into()),
                Some(1) => ("other".into(), beats[0].id.clone(), beats[0].lease.clone()),
                Some(_) => ("svc".into(), "%41".into(), "x".into()),
            };
            let mut headers = Vec::new();
            match lease {
                "right" => headers.push(("X-Lease", right)),
                "wrong" => headers.push(("X-Lease", "0".repeat(64))),
                "empty" => headers.push(("X-Lease", String::new())),
                _ => {}
            }
            let target = format!("/v1/services/{service}/instances/{id}/heartbeat");
            (method, target, headers, body)
        });
    let servers = (
        servers_target(),
        prop_oneof![8 => Just("GET"), 1 => Just("POST"), 1 => Just("HEAD")],
    )
        .prop_map(|(target, method)| (method, target, Vec::new(), Vec::new()));
    let healthz = proptest::sample::select(vec![
        ("GET", "/healthz"),
        ("GET", "/healthz?x=1"),
        ("HEAD", "/healthz"),
        ("POST", "/healthz"),
        ("GET", "/healthz/"),
        ("GET", "/servers/"),
        ("DELETE", "/servers"),
        ("GET", "/readyz"),
    ])
    .prop_map(|(method, target)| (method, target.to_owned(), Vec::new(), Vec::new()));
    (
        prop_oneof![3 => heartbeat, 4 => servers, 1 => healthz],
        prop_oneof![4 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")],
        proptest::sample::select(vec![
            None,
            Some("close"),
            Some("keep-alive"),
            Some("Keep-Alive, Foo"),
            Some("foo"),
        ]),
        proptest::sample::select(vec![
            None,
            Some("Bearer rt"),
            Some("Bearer wrong"),
            Some("bearer  rt "),
            Some("Basic cnQ="),
        ]),
        proptest::sample::select(vec![
            None,
            Some("text/plain"),
            Some("application/json"),
            Some("text/plain, application/json"),
            Some("*/*"),
        ]),
    )
        .prop_map(
            |((method, target, mut headers, body), version, connection, token, accept)| {
                if let Some(c) = connection {
                    headers.push(("Connection", c.to_owned()));
                }
                if let Some(t) = token {
                    headers.push(("Authorization", t.to_owned()));
                }
                if let Some(a) = accept {
                    headers.push(("Accept", a.to_owned()));
                }
                Request {
                    method,
                    target,
                    version,
                    headers,
                    body,
                }
            },
        )
}

#[tokio::test]
async fn both_paths_answer_generated_requests_byte_for_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = dir.path().join("seed.db");
    let seeding = Server::start_with(Options {
        config: Some(CONFIG.into()),
        ..Options::db(&seed)
    })
    .await;
    let mut beats = Vec::new();
    for (i, zone) in ["a", "b", "a", "b"].iter().enumerate() {
        let tags: Vec<&str> = if i % 2 == 0 { vec!["v2"] } else { vec![] };
        let body = serde_json::json!({
            "address": format!("10.0.0.{}:7000", i + 1), "zone": zone, "tags": tags, "weight": i % 2 + 1,
        });
        beats.push(seeding.register("svc", body).await);
    }
    beats.push(seeding.register_addr("default", "10.0.1.1:7000").await);
    seeding.stop().await;
    let (fast_db, slow_db) = (dir.path().join("fast.db"), dir.path().join("slow.db"));
    copy_store(&seed, &fast_db);
    copy_store(&seed, &slow_db);
    let fast = Server::start_with(Options {
        config: Some(CONFIG.into()),
        ..Options::db(&fast_db)
    })
    .await;
    let slow = Server::start_with(Options {
        config: Some(CONFIG.into()),
        no_fast_path: true,
        ..Options::db(&slow_db)
    })
    .await;
    let (fast, slow) = (addr(&fast), addr(&slow));
    // Live again after the restart, the same on both.
    for (k, r) in beats.iter().enumerate() {
        let body = format!("{{\"connections\": {}}}", (k + 1) * 10_000);
        let beat = format!(
            "PUT /v1/services/{}/instances/{}/heartbeat HTTP/1.1\r\nX-Lease: {}\r\nContent-Length: {}\r\n\r\n{body}",
            r.service,
            r.id,
            r.lease,
            body.len()
        );
        let (a, b) = (
            exchange(fast, beat.as_bytes()).await,
            exchange(slow, beat.as_bytes()).await,
        );
        assert_eq!(a, b);
        assert!(a.0.starts_with("HTTP/1.1 200 OK"), "{}", a.0);
    }
    let mut runner = TestRunner::deterministic();
    let strategy = requests(beats);
    let mut fast_answered = 0;
    for case in 0..400 {
        let request = strategy.new_tree(&mut runner).expect("a request").current();
        let bytes = request.bytes();
        let a = exchange(fast, &bytes).await;
        let b = exchange(slow, &bytes).await;
        assert_eq!(
            a, b,
            "case {case}: {request:?}\nfast path:\n{}\nhyper:\n{}",
            a.0, b.0
        );
        fast_answered +=
            usize::from(a.0.starts_with("HTTP/1.1 200") || a.0.starts_with("HTTP/1.0 200"));
    }
    assert!(fast_answered > 50, "too few good answers: {fast_answered}");
}

#[tokio::test]
async fn a_rate_limited_read_answers_429_with_retry_after_on_both_paths() {
    let (fast, slow) = fast_and_hyper("[limits]\nread_per_sec = 1\n").await;
    let request = b"GET /servers?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut answers = Vec::new();
    for server in [&fast, &slow] {
        let first = exchange(addr(server), request).await;
        let second = exchange(addr(server), request).await;
        answers.push((first, second));
    }
    assert_eq!(answers[0], answers[1]);
    let limited = &answers[0].1.0;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    assert!(limited.contains("\r\nretry-after: 1\r\n"), "{limited}");
}
