//! The keepalived health check (`deploy/keepalived/check_switchboard.sh`) against a
//! real node: it passes on a ready node, and on one that only lost PostgreSQL (the
//! node still forwards from its last view, so giving the VIP up would turn a
//! database outage into an outage of every legacy device), unless the store is
//! required; it fails when the API or the forward listener does not answer.
//! `tests/failover.rs` runs the same script under keepalived in network namespaces.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::pg::{DbProxy, TestDb};
use common::process::Server;
use common::{Options, code, eventually};

/// Runs the script on `http` and `forward`: its exit code and standard error.
fn check(http: SocketAddr, forward: SocketAddr, store: Option<&str>) -> (i32, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/keepalived/check_switchboard.sh"
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg(http.to_string())
        .arg(forward.to_string())
        .env_remove("SWITCHBOARD_CHECK_STORE");
    if let Some(store) = store {
        cmd.env("SWITCHBOARD_CHECK_STORE", store);
    }
    let out = cmd.output().expect("bash runs the check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback address with nothing listening.
fn closed() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// Multi-thread: the proxy to PostgreSQL runs on the test's runtime while the node
// process is started (which blocks this thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_keeps_a_node_that_lost_only_its_store_and_fails_one_that_cannot_serve() {
    let db = TestDb::create().await;
    let mut proxy = DbProxy::start().await;
    let node = Server::start_with(Options {
        forward: vec!["127.0.0.1:0=default".into()],
        forwards: 1,
        ..Options::db_url(&db.url_via(proxy.addr))
    });
    let http: SocketAddr = node.base.trim_start_matches("http://").parse().unwrap();
    let forward = node.forward_addrs[0];

    let (status, stderr) = tokio::task::spawn_blocking(move || check(http, forward, None))
        .await
        .unwrap();
    assert_eq!(status, 0, "a ready node passes: {stderr}");
    let (status, stderr) = tokio::task::spawn_blocking(move || check(http, closed(), None))
        .await
        .unwrap();
    assert_eq!(status, 1, "no forward listener: {stderr}");
    assert!(stderr.contains("accepts no connection"), "{stderr}");
    let (status, stderr) = tokio::task::spawn_blocking(move || check(closed(), forward, None))
        .await
        .unwrap();
    assert_eq!(status, 1, "no API: {stderr}");

    proxy.cut();
    let body = eventually("/readyz to say store_unavailable", || async {
        let (status, body) = node.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(code(&body), "store_unavailable", "{body}");
    let (status, stderr) = tokio::task::spawn_blocking(move || check(http, forward, None))
        .await
        .unwrap();
    assert_eq!(status, 0, "store lost, still forwarding: {stderr}");
    assert!(stderr.contains("cannot reach its store"), "{stderr}");
    let (status, stderr) =
        tokio::task::spawn_blocking(move || check(http, forward, Some("required")))
            .await
            .unwrap();
    assert_eq!(status, 1, "the store required: {stderr}");
    assert!(stderr.contains("503"), "{stderr}");

    proxy.restore().await;
    eventually("/readyz 200 again", || async {
        (node.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (status, stderr) =
        tokio::task::spawn_blocking(move || check(http, forward, Some("required")))
            .await
            .unwrap();
    assert_eq!(status, 0, "ready again: {stderr}");
}
