//! Liveness of SPEC section 3 end to end: expiry after `ttl_secs`, removal after
//! 3 × `ttl_secs`, self-preservation, and revival by heartbeat.
//!
//! The server runs in-process on the test's runtime, whose tokio clock is its
//! liveness clock: instead of sleeping through TTLs, the tests move that clock on
//! ([`common::jump`]), one sweep period per step ([`common::as_time_passes`]), and
//! talk HTTP in between while it runs in real time.

mod common;

use std::time::Duration;

use common::{Server, as_time_passes, eventually, jump};
use serde_json::json;
use switchboard::upkeep::SWEEP_EVERY;

#[tokio::test]
async fn an_instance_expires_after_its_ttl_and_is_removed_after_three() {
    let s = Server::start().await;
    let steady = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 30}),
        )
        .await;
    let short = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7002", "ttl_secs": 1}),
        )
        .await;
    let (_, body) = s.get("/servers").await;
    let version = body["version"].clone();
    assert_eq!(common::addresses(&body).len(), 2);

    as_time_passes("the ttl_secs=1 instance to expire", SWEEP_EVERY, || async {
        let servers = s.servers("").await;
        (servers == ["127.0.0.1:7001"]).then_some(())
    })
    .await;
    let (_, body) = s.get("/servers").await;
    assert_ne!(body["version"], version, "expiry changes the version");
    let listed = s
        .instance("default", &short.id)
        .await
        .expect("expired, not yet removed");
    assert_eq!(listed["state"], "expired");
    let (_, services) = s.get("/v1/services").await;
    assert_eq!(services["services"][0]["expired"], 1);

    as_time_passes("removal after 3 x ttl", SWEEP_EVERY, || async {
        s.instance("default", &short.id)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        s.heartbeat(&short, 1).await.0,
        404,
        "a removed id answers 404"
    );
    assert_eq!(s.heartbeat(&steady, 1).await.0, 200);
}

#[tokio::test]
async fn a_heartbeat_revives_an_expired_instance() {
    let s = Server::start().await;
    let r = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 2}),
        )
        .await;
    as_time_passes("expiry", SWEEP_EVERY, || async {
        s.servers("").await.is_empty().then_some(())
    })
    .await;
    let (status, _) = s.heartbeat(&r, 3).await;
    assert_eq!(status, 200);
    assert_eq!(s.servers("").await, ["127.0.0.1:7001"]);
    assert_eq!(s.instance("default", &r.id).await.unwrap()["state"], "up");
}

#[tokio::test]
async fn heartbeats_keep_an_instance_live_past_its_ttl() {
    let s = Server::start().await;
    let r = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 1}),
        )
        .await;
    // Heartbeat every 300 ms for 2.5 s: over two TTLs, never expired.
    for _ in 0..8 {
        assert_eq!(s.heartbeat(&r, 1).await.0, 200);
        assert_eq!(s.servers("").await, ["127.0.0.1:7001"]);
        jump(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn mass_expiry_triggers_self_preservation_until_three_ttls_pass() {
    let s = Server::start().await;
    let mut fleet = Vec::new();
    for port in 7001..7005 {
        fleet.push(
            s.register(
                "iot",
                json!({"address": format!("127.0.0.1:{port}"), "ttl_secs": 2}),
            )
            .await,
        );
    }
    // All four stop heartbeating at once: the registry suspects its own network.
    let body = as_time_passes("self-preservation", SWEEP_EVERY, || async {
        let (_, body) = s.get("/servers?service=iot&limit=10").await;
        (body["self_preservation"] == true).then_some(body)
    })
    .await;
    assert_eq!(
        common::addresses(&body).len(),
        4,
        "the last known set is still handed out"
    );
    s.wait_log("self-preservation on").await;
    let (_, services) = s.get("/v1/services").await;
    let iot = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "iot")
        .unwrap()
        .clone();
    assert_eq!(iot["self_preservation"], true);
    let listed = s.instance("iot", &fleet[0].id).await.unwrap();
    assert_eq!(
        listed["state"], "expired",
        "the admin listing keeps the true state"
    );

    // At the latest after 3 x ttl it clears, and expiry and removal go on.
    as_time_passes(
        "self-preservation to clear and the fleet to be removed",
        SWEEP_EVERY,
        || async {
            let (_, body) = s.get("/servers?service=iot").await;
            let cleared = body["self_preservation"] == false && common::addresses(&body).is_empty();
            cleared.then_some(())
        },
    )
    .await;
    s.wait_log("self-preservation off").await;
    as_time_passes("removal", SWEEP_EVERY, || async {
        s.instance("iot", &fleet[0].id)
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn self_preservation_clears_when_heartbeats_return() {
    let s = Server::start().await;
    let mut fleet = Vec::new();
    for port in 7001..7004 {
        fleet.push(
            s.register(
                "iot",
                json!({"address": format!("127.0.0.1:{port}"), "ttl_secs": 3}),
            )
            .await,
        );
    }
    as_time_passes("self-preservation", SWEEP_EVERY, || async {
        let (_, body) = s.get("/servers?service=iot").await;
        (body["self_preservation"] == true).then_some(())
    })
    .await;
    for r in &fleet {
        assert_eq!(s.heartbeat(r, 1).await.0, 200);
    }
    eventually("self-preservation to clear", || async {
        let (_, body) = s.get("/servers?service=iot").await;
        (body["self_preservation"] == false).then_some(())
    })
    .await;
    s.wait_log("self-preservation off").await;
    assert_eq!(s.servers("?service=iot").await.len(), 3);
}

#[tokio::test]
async fn a_minority_expiring_is_ordinary_expiry() {
    let s = Server::start().await;
    let mut fleet = Vec::new();
    for port in 7001..7008 {
        fleet.push(
            s.register(
                "iot",
                json!({"address": format!("127.0.0.1:{port}"), "ttl_secs": 2}),
            )
            .await,
        );
    }
    // Five of seven keep heartbeating; two go quiet: not a partition.
    // For 4 s, in steps of 400 ms.
    for _ in 0..10 {
        for r in &fleet[..5] {
            s.heartbeat(r, 1).await;
        }
        let (_, body) = s.get("/servers?service=iot&limit=10").await;
        assert_eq!(body["self_preservation"], false);
        jump(Duration::from_millis(400)).await;
    }
    assert_eq!(s.servers("?service=iot&limit=10").await.len(), 5);
}
