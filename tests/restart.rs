//! Durability on the SQLite file: what was acknowledged survives a restart, with the
//! grace period of SPEC section 3, and concurrent registrations all land. Real
//! processes: SIGTERM, kill -9 and a restart on the same file are what is tested.

mod common;

use common::Options;
use common::process::Server;
use serde_json::json;

#[tokio::test]
async fn a_restart_keeps_registrations_leases_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    let a = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 5, "zone": "eu-1"}),
        )
        .await;
    let b = s.register_addr("default", "127.0.0.1:7002").await;
    let gone = s.register_addr("default", "127.0.0.1:7003").await;
    let drained = s.register_addr("default", "127.0.0.1:7004").await;
    assert_eq!(s.heartbeat(&a, 42).await.0, 200);
    assert_eq!(s.heartbeat(&b, 7).await.0, 200);
    let del = s.url(&format!("/v1/services/default/instances/{}", gone.id));
    let resp = s
        .client
        .delete(del)
        .header("X-Lease", &gone.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let drain = s.url(&format!(
        "/v1/services/default/instances/{}/drain",
        drained.id
    ));
    let resp = s
        .client
        .post(drain)
        .header("X-Lease", &drained.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, before) = s.get("/servers").await;
    assert_eq!(s.terminate(), 0, "SIGTERM exits 0");

    let s = Server::start_with(Options::db(&db));
    let (_, after) = s.get("/servers").await;
    assert_eq!(
        after["version"], before["version"],
        "the same set has the same version"
    );
    // Handed out at once, in the grace period, with the counts that were persisted.
    let mut servers = s.servers("?limit=10").await;
    servers.sort();
    assert_eq!(servers, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let listed = s.instance("default", &a.id).await.expect("a survived");
    assert_eq!(listed["connections"], 42);
    assert_eq!(listed["zone"], "eu-1");
    assert_eq!(
        s.instance("default", &b.id).await.unwrap()["connections"],
        7
    );
    assert!(
        s.instance("default", &gone.id).await.is_none(),
        "deregistration is durable"
    );
    assert_eq!(
        s.instance("default", &drained.id).await.unwrap()["state"],
        "draining"
    );
    // The old leases still work, and a wrong one still does not.
    assert_eq!(s.heartbeat(&a, 43).await.0, 200);
    assert_eq!(s.heartbeat(&b, 8).await.0, 200);
    let forged = common::Registered {
        lease: b.lease.replace(|c: char| c != '0', "0"),
        ..b.clone()
    };
    assert_eq!(s.heartbeat(&forged, 1).await.0, 403);
    // Re-registering after the restart keeps the id.
    let again = s.register_addr("default", "127.0.0.1:7001").await;
    assert_eq!((again.status, again.id.as_str()), (200, a.id.as_str()));
}

#[tokio::test]
async fn a_kill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    let mut ids = Vec::new();
    for port in 7001..7021 {
        ids.push(
            s.register_addr("default", &format!("127.0.0.1:{port}"))
                .await
                .id,
        );
    }
    s.kill();
    let s = Server::start_with(Options::db(&db));
    let (_, body) = s.get("/v1/services/default/instances").await;
    let listed: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} lost by kill -9");
    }
}

#[tokio::test]
async fn hundreds_of_concurrent_registrations_all_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let client = s.client.clone();
        let url = s.url("/v1/services/fleet/instances");
        tasks.push(tokio::spawn(async move {
            let body = json!({"address": format!("10.0.{}.{}:6666", i / 200, i % 200 + 1)});
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 201);
            let body: serde_json::Value = resp.json().await.unwrap();
            body["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300);
    assert_eq!(s.terminate(), 0);

    let s = Server::start_with(Options::db(&db));
    let (_, body) = s.get("/v1/services/fleet/instances").await;
    let mut listed: Vec<String> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ids);
    assert_eq!(s.servers("?service=fleet&limit=100").await.len(), 100);
}

#[tokio::test]
async fn a_paced_evacuation_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    let r = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 3}),
        )
        .await;
    let drain = s.url(&format!("/v1/services/default/instances/{}/drain", r.id));
    let resp = s
        .client
        .post(drain)
        .header("X-Lease", &r.lease)
        .body(r#"{"evacuate_per_sec": 40}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.kill();
    let s = Server::start_with(Options::db(&db));
    // heartbeat_secs is 1: still 40 per heartbeat after the restart.
    assert_eq!(s.heartbeat(&r, 500).await.1["shed"], 40);
}

#[tokio::test]
async fn concurrent_registrations_share_commits_and_all_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    // 200 clients of their own (a connection each), all at once: they queue behind
    // each other's commits and share them.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let url = s.url("/v1/services/fleet/instances");
        tasks.push(tokio::spawn(async move {
            let client = switchboard::tls::client::reqwest_client();
            let address = format!("10.1.{}.{}:6666", i / 100, i % 100 + 1);
            let resp = client
                .post(url)
                .json(&json!({"address": address}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let body: serde_json::Value = resp.json().await.unwrap();
            let registered = common::Registered::from_answer("fleet", 201, body);
            (address, registered)
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.push(t.await.unwrap());
    }
    s.kill();

    let s = Server::start_with(Options::db(&db));
    let (_, body) = s.get("/v1/services/fleet/instances").await;
    let mut listed: Vec<(String, String)> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let field = |k: &str| i[k].as_str().unwrap().to_owned();
            (field("address"), field("id"))
        })
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = acknowledged
        .iter()
        .map(|(address, r)| (address.clone(), r.id.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "every acknowledged registration, after kill -9"
    );
    // Each with the lease its own answer carried.
    for (_, r) in &acknowledged {
        assert_eq!(s.heartbeat(r, 1).await.0, 200, "lease of {}", r.id);
    }
}
