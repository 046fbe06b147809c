//! Spreading and affinity end to end: pending hand-outs spread a burst, affinity keys
//! stick while membership is stable, zones and caps order the list, and overloaded
//! instances are asked to shed.

mod common;

use std::collections::HashMap;

use common::{Options, Server};
use serde_json::json;

#[tokio::test]
async fn a_burst_on_two_fresh_instances_is_spread_two_and_two() {
    let s = Server::start().await;
    s.register_addr("default", "127.0.0.1:7001").await;
    s.register_addr("default", "127.0.0.1:7002").await;
    let mut firsts: HashMap<String, u32> = HashMap::new();
    for _ in 0..4 {
        let servers = s.servers("").await;
        assert_eq!(servers.len(), 2);
        *firsts.entry(servers[0].clone()).or_default() += 1;
    }
    assert_eq!(firsts.get("127.0.0.1:7001"), Some(&2), "{firsts:?}");
    assert_eq!(firsts.get("127.0.0.1:7002"), Some(&2), "{firsts:?}");
}

#[tokio::test]
async fn a_heartbeat_absorbs_pending_hand_outs() {
    let s = Server::start().await;
    let a = s.register_addr("default", "127.0.0.1:7001").await;
    for _ in 0..3 {
        s.servers("?limit=1").await;
    }
    assert_eq!(s.instance("default", &a.id).await.unwrap()["pending"], 3);
    // The three clients connected: the count shows them, nothing stays pending.
    s.heartbeat(&a, 3).await;
    let listed = s.instance("default", &a.id).await.unwrap();
    assert_eq!(listed["pending"], 0);
    assert_eq!(listed["load"], 3.0);
}

#[tokio::test]
async fn lower_load_first_weight_counts_and_over_cap_last() {
    let s = Server::start().await;
    let busy = s.register_addr("default", "127.0.0.1:7001").await;
    let heavy = s
        .register("default", json!({"address": "127.0.0.1:7002", "weight": 4}))
        .await;
    let capped = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7003", "max_connections": 10}),
        )
        .await;
    s.heartbeat(&busy, 100).await; // load 100
    s.heartbeat(&heavy, 200).await; // load 50
    s.heartbeat(&capped, 10).await; // load 10 but at its cap
    let (_, body) = s.get("/servers").await;
    assert_eq!(
        common::addresses(&body),
        ["127.0.0.1:7002", "127.0.0.1:7001", "127.0.0.1:7003"]
    );
    assert_eq!(body["servers"][0]["load"], 50.0);
    assert_eq!(body["servers"][0]["weight"], 4);
}

#[tokio::test]
async fn a_zone_comes_first_then_the_rest() {
    let s = Server::start().await;
    let eu = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "zone": "eu-1"}),
        )
        .await;
    let us = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7002", "zone": "us-1"}),
        )
        .await;
    s.heartbeat(&eu, 500).await;
    s.heartbeat(&us, 5).await;
    for _ in 0..3 {
        assert_eq!(
            s.servers("?zone=eu-1").await,
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
    }
    assert_eq!(s.servers("?zone=ap-9").await[0], "127.0.0.1:7002");
}

#[tokio::test]
async fn a_key_sticks_to_one_server_and_moves_when_it_drains() {
    let s = Server::start().await;
    let mut fleet = Vec::new();
    for port in 7001..7005 {
        let r = s
            .register_addr("default", &format!("127.0.0.1:{port}"))
            .await;
        s.heartbeat(&r, 1000).await;
        fleet.push(r);
    }
    let owner = s.servers("?key=device-42").await[0].clone();
    for _ in 0..20 {
        assert_eq!(
            s.servers("?key=device-42").await[0],
            owner,
            "affinity broke"
        );
    }
    // Different keys spread over several servers.
    let mut owners: Vec<String> = Vec::new();
    for k in 0..40 {
        owners.push(s.servers(&format!("?key=dev-{k}")).await[0].clone());
    }
    owners.sort();
    owners.dedup();
    assert!(owners.len() >= 3, "40 keys landed on {owners:?}");

    let (_, listing) = s.get("/v1/services/default/instances").await;
    let owner_id = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == owner.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner_reg = fleet.iter().find(|r| r.id == owner_id).unwrap();
    let drain = s.url(&format!("/v1/services/default/instances/{owner_id}/drain"));
    let resp = s
        .client
        .post(drain)
        .header("X-Lease", &owner_reg.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let moved = s.servers("?key=device-42").await[0].clone();
    assert_ne!(moved, owner);
    for _ in 0..10 {
        assert_eq!(s.servers("?key=device-42").await[0], moved);
    }
}

#[tokio::test]
async fn an_overloaded_instance_is_asked_to_shed_a_little_at_a_time() {
    let s = Server::start().await;
    let old = s.register_addr("default", "127.0.0.1:7001").await;
    let new = s.register_addr("default", "127.0.0.1:7002").await;
    assert_eq!(s.heartbeat(&new, 0).await.1["shed"], 0);
    // Mean 5000: the old server holds twice that, and may shed 1 % per heartbeat.
    let (_, answer) = s.heartbeat(&old, 10_000).await;
    assert_eq!(answer["shed"], 100);
    // Within the 10 % tolerance: nothing to shed.
    s.heartbeat(&new, 9_000).await;
    assert_eq!(s.heartbeat(&old, 10_000).await.1["shed"], 0);
}

#[tokio::test]
async fn rebalancing_can_be_turned_off() {
    let s = Server::start_with(Options {
        config: Some("[rebalance]\nenabled = false\n".into()),
        ..Options::default()
    })
    .await;
    let old = s.register_addr("default", "127.0.0.1:7001").await;
    s.register_addr("default", "127.0.0.1:7002").await;
    assert_eq!(s.heartbeat(&old, 10_000).await.1["shed"], 0);
}

#[tokio::test]
async fn a_tag_filter_answers_only_tagged_instances() {
    let s = Server::start().await;
    s.register_addr("default", "127.0.0.1:7001").await;
    s.register(
        "default",
        json!({"address": "127.0.0.1:7002", "tags": ["v2", "canary"]}),
    )
    .await;
    assert_eq!(s.servers("?tag=v2").await, ["127.0.0.1:7002"]);
    assert_eq!(s.servers("?tag=v2&key=device-1").await, ["127.0.0.1:7002"]);
    assert!(s.servers("?tag=v3").await.is_empty());
    assert_eq!(s.servers("?limit=10").await.len(), 2, "no tag: everyone");
    let (status, body) = s.get("/servers?tag=bad%20tag").await;
    assert_eq!((status, common::code(&body)), (400, "invalid_tag"));
}

#[tokio::test]
async fn servers_answers_carry_the_reconnect_jitter() {
    let s = Server::start().await;
    let (_, body) = s.get("/servers").await;
    assert_eq!(body["reconnect_jitter_ms"], 5000, "the SPEC default");
    let s = Server::start_with(Options {
        config: Some("[rebalance]\nreconnect_jitter_ms = 750\n".into()),
        ..Options::default()
    })
    .await;
    let (_, body) = s.get("/servers").await;
    assert_eq!(body["reconnect_jitter_ms"], 750);
    let resp = s
        .client
        .get(s.url("/servers"))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-reconnect-jitter-ms"], "750");
}

#[tokio::test]
async fn a_paced_evacuation_sheds_its_rate_per_heartbeat_interval() {
    let s = Server::start().await;
    let full = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 15}),
        )
        .await;
    s.register_addr("default", "127.0.0.1:7002").await;
    assert_eq!(s.heartbeat(&full, 60_000).await.0, 200);
    let drain = s.url(&format!("/v1/services/default/instances/{}/drain", full.id));
    for (body, code) in [
        (r#"{"evacuate_per_sec": 0}"#, "invalid_evacuate_per_sec"),
        (
            r#"{"evacuate_per_sec": 100001}"#,
            "invalid_evacuate_per_sec",
        ),
        (r#"{"evacuate_per_sec": 5, "extra": 1}"#, "unknown_field"),
    ] {
        let resp = s
            .client
            .post(&drain)
            .header("X-Lease", &full.lease)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(common::code(&answer), code, "{body}");
    }
    assert_eq!(
        s.instance("default", &full.id).await.unwrap()["state"],
        "up",
        "a refused drain changes nothing"
    );
    let resp = s
        .client
        .post(&drain)
        .header("X-Lease", &full.lease)
        .body(r#"{"evacuate_per_sec": 200}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // heartbeat_secs is 5: 200/s asks for 1000 per heartbeat, then what is left.
    assert_eq!(s.heartbeat(&full, 60_000).await.1["shed"], 1_000);
    assert_eq!(s.heartbeat(&full, 700).await.1["shed"], 700);
    assert_eq!(s.heartbeat(&full, 0).await.1["shed"], 0);
}
