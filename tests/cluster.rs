//! Cluster mode end to end: two or three real registry processes sharing a real
//! PostgreSQL database (one database per test, created and dropped by the test).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pg::{DbProxy, TestDb};
use common::process::Server;
use common::{Options, code, converge, eventually};
use serde_json::{Value, json};

fn node(url: &str) -> Server {
    Server::start_with(Options::db_url(url))
}

#[tokio::test]
async fn writes_on_one_node_are_seen_on_the_other_within_two_seconds() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    let limit = Duration::from_secs(2);

    let r1 = a.register_addr("mqtt", "10.0.0.1:1883").await;
    let r2 = b.register_addr("mqtt", "10.0.0.2:1883").await;
    converge(&b, "mqtt", &["10.0.0.1:1883", "10.0.0.2:1883"], limit).await;
    converge(&a, "mqtt", &["10.0.0.1:1883", "10.0.0.2:1883"], limit).await;
    assert_eq!(a.version("mqtt").await, b.version("mqtt").await);

    // Re-registering the address on the other node keeps the id.
    let again = b.register_addr("mqtt", "10.0.0.1:1883").await;
    assert_eq!((again.status, again.id.as_str()), (200, r1.id.as_str()));

    // Drain on B (with the lease A handed out), seen on A.
    let drain = b.url(&format!("/v1/services/mqtt/instances/{}/drain", r2.id));
    let resp = b
        .client
        .post(drain)
        .header("X-Lease", &r2.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    converge(&a, "mqtt", &["10.0.0.1:1883"], limit).await;

    // Deregister on A, seen on B.
    let del = a.url(&format!("/v1/services/mqtt/instances/{}", again.id));
    let resp = a
        .client
        .delete(del)
        .header("X-Lease", &again.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    converge(&b, "mqtt", &[], limit).await;
    assert_eq!(a.version("mqtt").await, b.version("mqtt").await);
}

#[tokio::test]
async fn heartbeats_alternating_between_nodes_keep_an_instance_live() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    let r = a
        .register(
            "default",
            json!({"address": "10.0.0.1:7000", "ttl_secs": 2}),
        )
        .await;
    converge(&b, "default", &["10.0.0.1:7000"], Duration::from_secs(2)).await;
    // Three TTLs of heartbeats, alternating nodes every 500 ms (a backend's pace).
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    for i in 0..12u64 {
        pace.tick().await;
        let via = if i % 2 == 0 { &a } else { &b };
        let (status, _) = via.heartbeat(&r, i).await;
        assert_eq!(status, 200, "heartbeat {i} via {}", via.base);
        for s in [&a, &b] {
            assert_eq!(
                s.servers("").await,
                ["10.0.0.1:7000"],
                "expired on {}",
                s.base
            );
        }
    }
    // The count reported through B reached A.
    eventually("the last count to reach A", || async {
        let listed = a.instance("default", &r.id).await?;
        (listed["connections"] == 11).then_some(())
    })
    .await;
    // Then silence: both nodes expire it, and it is removed (404 on both).
    for s in [&a, &b] {
        eventually("expiry on every node", || async {
            s.servers("").await.is_empty().then_some(())
        })
        .await;
    }
    // (Polled through the listing: a heartbeat would revive it.)
    for s in [&a, &b] {
        eventually("removal on every node", || async {
            s.instance("default", &r.id).await.is_none().then_some(())
        })
        .await;
    }
    assert_eq!(a.heartbeat(&r, 1).await.0, 404);
    assert_eq!(b.heartbeat(&r, 1).await.0, 404);
}

/// The sum of the heartbeat batch sizes a node wrote: heartbeat rows it wrote.
async fn beats_written(s: &Server) -> f64 {
    let text = s.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_heartbeat_batch_size_sum "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn heartbeats_on_one_node_keep_an_instance_live_on_the_other_with_half_the_writes() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    let r = a
        .register(
            "default",
            json!({"address": "10.0.0.1:7000", "ttl_secs": 3}),
        )
        .await;
    converge(&b, "default", &["10.0.0.1:7000"], Duration::from_secs(2)).await;
    // Four TTLs of heartbeats on A only, every 500 ms (a backend may beat more often
    // than the advised third of the TTL). A writes a beat only when it is 750 ms
    // newer than the last one stored (`cluster::beat_gap(3)`), so about every
    // second one; B reads them and never sees the instance expire. The count stays
    // within 1/64 of the stored one (1,000 to 1,009), so no beat is due for having
    // moved (`cluster::count_moved`) but the first.
    let beats = 24u64;
    let count = |i: u64| 1_000 + i % 10;
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    for i in 0..beats {
        pace.tick().await;
        let (status, _) = a.heartbeat(&r, count(i)).await;
        assert_eq!(status, 200, "heartbeat {i} on A");
        assert_eq!(
            b.servers("").await,
            ["10.0.0.1:7000"],
            "expired on B after {i} heartbeats on A"
        );
    }
    // The last beat waits for its gap and is written too: its count reaches B.
    eventually("the last count to reach B", || async {
        let listed = b.instance("default", &r.id).await?;
        (listed["connections"] == count(beats - 1)).then_some(())
    })
    .await;
    let written = beats_written(&a).await;
    assert!(
        written <= (beats * 2 / 3) as f64,
        "A wrote {written} heartbeat rows for {beats} heartbeats"
    );
    assert!(written >= 1.0, "A wrote no heartbeat at all");
    assert_eq!(beats_written(&b).await, 0.0, "B got no heartbeat to write");
}

#[tokio::test]
async fn kill_9_under_a_registration_burst_loses_nothing_acknowledged() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    let c = node(&db.url());
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let client = a.client.clone();
        let url = a.url("/v1/services/fleet/instances");
        let answered = Arc::clone(&answered);
        tasks.push(tokio::spawn(async move {
            let body = json!({"address": format!("10.1.{}.{}:6666", i / 200, i % 200 + 1)});
            let resp = client.post(url).json(&body).send().await.ok()?;
            if resp.status() != 201 {
                return None;
            }
            let body: Value = resp.json().await.ok()?;
            let id = body["id"].as_str()?.to_owned();
            answered.fetch_add(1, Ordering::SeqCst);
            Some(id)
        }));
    }
    // Kill A while the burst is in flight, once some registrations were acknowledged
    // (a fixed delay could kill it before the first, or after the last).
    let deadline = Instant::now() + common::PATIENCE;
    while answered.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "no registration acknowledged");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill();
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            acknowledged.push(id);
        }
    }
    for s in [&b, &c] {
        eventually(
            "every acknowledged registration on the survivors",
            || async {
                let (_, body) = s.get("/v1/services/fleet/instances").await;
                let listed: Vec<&str> = body["instances"]
                    .as_array()?
                    .iter()
                    .filter_map(|i| i["id"].as_str())
                    .collect();
                acknowledged
                    .iter()
                    .all(|id| listed.contains(&id.as_str()))
                    .then_some(())
            },
        )
        .await;
    }
    // B and C go on answering, and expiring: a short-lived instance registered on B
    // expires and is removed on both, whichever of them now leads removal.
    let short = b
        .register(
            "fleet-short",
            json!({"address": "10.2.0.1:1", "ttl_secs": 1}),
        )
        .await;
    converge(&c, "fleet-short", &["10.2.0.1:1"], Duration::from_secs(2)).await;
    for s in [&b, &c] {
        eventually("removal after A died", || async {
            s.instance("fleet-short", &short.id)
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }
    eprintln!(
        "{} of 400 registrations acknowledged before the kill",
        acknowledged.len()
    );
}

#[tokio::test]
async fn a_node_started_later_catches_up() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    for port in 1..=20 {
        a.register_addr("late", &format!("10.3.0.{port}:80")).await;
    }
    let b = node(&db.url());
    let (_, listing) = b.get("/v1/services/late/instances").await;
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        20,
        "B knows all at start"
    );
    assert_eq!(a.version("late").await, b.version("late").await);
}

#[tokio::test]
async fn a_burst_split_across_two_nodes_spreads_over_two_fresh_instances() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    a.register_addr("burst", "10.4.0.1:80").await;
    a.register_addr("burst", "10.4.0.2:80").await;
    converge(
        &b,
        "burst",
        &["10.4.0.1:80", "10.4.0.2:80"],
        Duration::from_secs(2),
    )
    .await;
    let mut firsts: HashMap<String, u32> = HashMap::new();
    // Alternate nodes, a batch period (250 ms) apart and then some: each node ranks
    // with the other's hand-outs. A pause, not a wait for a condition: the listings
    // cannot say when the other node has this hand-out (converge's own /servers calls
    // are pending too, and pending hand-outs age out), and the point is the spread
    // the nodes reach with the exchange's own period.
    let mut pace = tokio::time::interval(Duration::from_millis(700));
    for i in 0..4 {
        pace.tick().await;
        let via = if i % 2 == 0 { &a } else { &b };
        let first = via.servers("?service=burst").await[0].clone();
        *firsts.entry(first).or_default() += 1;
    }
    assert_eq!(firsts.get("10.4.0.1:80"), Some(&2), "{firsts:?}");
    assert_eq!(firsts.get("10.4.0.2:80"), Some(&2), "{firsts:?}");
    // A fast burst split across the nodes is spread too.
    let mut firsts: HashMap<String, u32> = HashMap::new();
    for i in 0..8 {
        let via = if i % 2 == 0 { &a } else { &b };
        let first = via.servers("?service=burst").await[0].clone();
        *firsts.entry(first).or_default() += 1;
    }
    assert_eq!(firsts.len(), 2, "{firsts:?}");
}

// Multi-threaded: the database proxy must keep running while the test thread waits
// for a server to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_keeps_answers_refuses_writes_and_recovers() {
    let db = TestDb::create().await;
    let mut proxy = DbProxy::start().await;
    let a = node(&db.url_via(proxy.addr));
    let r = a
        .register("default", json!({"address": "10.5.0.1:80", "ttl_secs": 2}))
        .await;
    assert_eq!(a.get("/readyz").await.0, 200);
    proxy.cut();
    let body = eventually("/readyz to fail", || async {
        let (status, body) = a.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(code(&body), "store_unavailable", "{body}");
    // Longer than the TTL: the last known state is still answered, and heartbeats are
    // taken in memory, to be written when the database is back: a backend's pace of
    // 300 ms, ten times.
    let mut pace = tokio::time::interval(Duration::from_millis(300));
    for _ in 0..10 {
        pace.tick().await;
        assert_eq!(a.servers("").await, ["10.5.0.1:80"]);
        assert_eq!(a.heartbeat(&r, 7).await.0, 200);
    }
    let resp = a
        .client
        .post(a.url("/v1/services/default/instances"))
        .json(&json!({"address": "10.5.0.2:80"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "store_unavailable");
    proxy.restore().await;
    eventually("/readyz to recover", || async {
        (a.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Writes work again, and the refused one left nothing behind.
    a.register_addr("default", "10.5.0.3:80").await;
    let (_, listing) = a.get("/v1/services/default/instances").await;
    let addresses: Vec<&str> = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .collect();
    assert!(!addresses.contains(&"10.5.0.2:80"), "{addresses:?}");
    assert!(addresses.contains(&"10.5.0.3:80"));
    assert_eq!(
        a.heartbeat(&r, 8).await.0,
        200,
        "the instance lived through the outage"
    );
    let mut servers = a.servers("").await;
    servers.sort();
    assert_eq!(servers, ["10.5.0.1:80", "10.5.0.3:80"]);
}

#[tokio::test]
async fn a_node_exits_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let b = node(&db.url());
    a.register_addr("default", "10.6.0.1:80").await;
    converge(&b, "default", &["10.6.0.1:80"], Duration::from_secs(2)).await;
    assert_eq!(a.terminate(), 0);
    assert_eq!(
        b.servers("").await,
        ["10.6.0.1:80"],
        "the other node goes on"
    );
    assert_eq!(b.terminate(), 0);
}

#[tokio::test]
async fn a_node_reports_its_sync_lag_in_metrics() {
    let db = TestDb::create().await;
    let a = node(&db.url());
    let lag = eventually("a sync lag sample", || async {
        let text = switchboard::tls::client::reqwest_client()
            .get(a.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("switchboard_cluster_sync_lag_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
    .await;
    // Syncs run every 250 ms: a lag of seconds would mean the loop stalled.
    assert!((0.0..2.0).contains(&lag), "lag {lag}");
}
