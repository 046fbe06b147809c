//! Black-box tests of the HTTP API of SPEC section 2: every status code and error
//! code, against the server on port 0 (in-process; the token test runs the binary, as
//! it sets a token through the environment).

mod common;

use std::time::Duration;

use common::{Options, Server, code};
use serde_json::{Value, json};

#[tokio::test]
async fn register_answers_201_then_200_with_the_same_id() {
    let s = Server::start().await;
    let first = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 9}),
        )
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body["service"], "default");
    assert_eq!(first.body["ttl_secs"], 9);
    assert_eq!(first.body["heartbeat_secs"], 3);
    let again = s
        .register("default", json!({"address": "127.0.0.1:7001", "weight": 3}))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.id, first.id);
    assert_ne!(
        again.lease, first.lease,
        "re-registration issues a new lease"
    );
    assert_eq!(again.body["ttl_secs"], 15, "default ttl");
    assert_eq!(again.body["heartbeat_secs"], 5);
    // The old lease is replaced.
    assert_eq!(s.heartbeat(&first, 1).await.0, 403);
    assert_eq!(s.heartbeat(&again, 1).await.0, 200);
    let listed = s.instance("default", &first.id).await.unwrap();
    assert_eq!(listed["weight"], 3);
}

#[tokio::test]
async fn ipv6_and_host_names_are_accepted_and_canonical() {
    let s = Server::start().await;
    let v6 = s.register_addr("default", "[0:0::1]:6666").await;
    assert_eq!(
        s.instance("default", &v6.id).await.unwrap()["address"],
        "[::1]:6666"
    );
    let again = s.register_addr("default", "[::1]:6666").await;
    assert_eq!(
        again.id, v6.id,
        "the same address in another spelling is the same instance"
    );
    s.register_addr("default", "Backend-1.example:80").await;
    let servers = s.servers("?limit=10").await;
    assert!(
        servers.contains(&"backend-1.example:80".to_owned()),
        "{servers:?}"
    );
}

#[tokio::test]
async fn invalid_fields_answer_400_with_their_code_and_change_nothing() {
    let s = Server::start().await;
    let path = "/v1/services/default/instances";
    let cases = [
        (r#"{}"#, "invalid_address"),
        (r#"{"address": "10.0.0.5"}"#, "invalid_address"),
        (r#"{"address": "10.0.0.5:0"}"#, "invalid_address"),
        (r#"{"address": "10.0.0.5:65536"}"#, "invalid_address"),
        (r#"{"address": "::1:80"}"#, "invalid_address"),
        (r#"{"address": 5}"#, "invalid_address"),
        (
            r#"{"address": "10.0.0.5:1", "weight": 0}"#,
            "invalid_weight",
        ),
        (
            r#"{"address": "10.0.0.5:1", "weight": 1001}"#,
            "invalid_weight",
        ),
        (
            r#"{"address": "10.0.0.5:1", "weight": "2"}"#,
            "invalid_weight",
        ),
        (r#"{"address": "10.0.0.5:1", "ttl_secs": 0}"#, "invalid_ttl"),
        (
            r#"{"address": "10.0.0.5:1", "ttl_secs": 301}"#,
            "invalid_ttl",
        ),
        (
            r#"{"address": "10.0.0.5:1", "max_connections": 0}"#,
            "invalid_max_connections",
        ),
        (
            r#"{"address": "10.0.0.5:1", "zone": "bad zone"}"#,
            "invalid_zone",
        ),
        (
            r#"{"address": "10.0.0.5:1", "tags": ["ok", ""]}"#,
            "invalid_tags",
        ),
        (
            r#"{"address": "10.0.0.5:1", "metadata": {"a": 1}}"#,
            "invalid_metadata",
        ),
        (
            r#"{"address": "10.0.0.5:1", "surprise": true}"#,
            "unknown_field",
        ),
        (r#"{"address": "10.0.0.5:1""#, "invalid_json"),
        (r#"[1, 2]"#, "invalid_json"),
    ];
    for (body, expected) in cases {
        let (status, answer) = s.post_raw(path, body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(code(&answer), expected, "{body} -> {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, answer) = s
        .post_raw(
            path,
            &json!({"address": "10.0.0.5:1", "metadata": many}).to_string(),
        )
        .await;
    assert_eq!((status, code(&answer)), (400, "invalid_metadata"));
    let big = json!({"address": "10.0.0.5:1", "metadata": {"k": "v".repeat(4100)}});
    let (status, answer) = s.post_raw(path, &big.to_string()).await;
    assert_eq!((status, code(&answer)), (400, "invalid_metadata"));
    let (status, answer) = s
        .post_raw(
            "/v1/services/Bad_Name/instances",
            r#"{"address":"10.0.0.5:1"}"#,
        )
        .await;
    assert_eq!((status, code(&answer)), (400, "invalid_service"));

    let (_, listing) = s.get("/v1/services/default/instances").await;
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        0,
        "nothing was registered"
    );
}

#[tokio::test]
async fn bodies_over_64_kib_answer_413() {
    let s = Server::start().await;
    let padding = " ".repeat(64 * 1024 + 1);
    let body = format!(r#"{{"address": "10.0.0.5:1"}}{padding}"#);
    let (status, answer) = s.post_raw("/v1/services/default/instances", &body).await;
    assert_eq!((status, code(&answer)), (413, "payload_too_large"));
    let just_fits = format!(r#"{{"address": "10.0.0.5:1"}}{}"#, " ".repeat(60 * 1024));
    let (status, _) = s
        .post_raw("/v1/services/default/instances", &just_fits)
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn heartbeat_answers_ttl_and_shed_and_refuses_bad_leases() {
    let s = Server::start().await;
    let r = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "ttl_secs": 30}),
        )
        .await;
    let (status, body) = s.heartbeat(&r, 1234).await;
    assert_eq!(status, 200);
    assert_eq!(body["ttl_secs"], 30);
    assert_eq!(body["shed"], 0, "a lone instance is the mean");
    let forged = common::Registered {
        lease: "0".repeat(64),
        ..r.clone()
    };
    let (status, body) = s.heartbeat(&forged, 1).await;
    assert_eq!((status, code(&body)), (403, "bad_lease"));
    // No X-Lease at all: the same refusal, saying what is missing.
    let resp = s
        .client
        .put(s.url(&format!(
            "/v1/services/default/instances/{}/heartbeat",
            r.id
        )))
        .json(&json!({"connections": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "bad_lease");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no X-Lease header"), "{message}");
    let unknown = common::Registered {
        id: "does-not-exist".into(),
        ..r.clone()
    };
    let (status, body) = s.heartbeat(&unknown, 1).await;
    assert_eq!((status, code(&body)), (404, "unknown_instance"));
    let elsewhere = common::Registered {
        service: "other".into(),
        ..r.clone()
    };
    assert_eq!(s.heartbeat(&elsewhere, 1).await.0, 404);
    // Bad count: refused, and the stored count is unchanged.
    let resp = s
        .client
        .put(s.url(&format!(
            "/v1/services/default/instances/{}/heartbeat",
            r.id
        )))
        .header("X-Lease", &r.lease)
        .body(r#"{"connections": -5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "invalid_connections");
    assert_eq!(
        s.instance("default", &r.id).await.unwrap()["connections"],
        1234
    );
}

#[tokio::test]
async fn drain_keeps_the_instance_but_never_hands_it_out() {
    let s = Server::start().await;
    let a = s.register_addr("default", "127.0.0.1:7001").await;
    let b = s.register_addr("default", "127.0.0.1:7002").await;
    let (_, before) = s.get("/servers").await;
    let resp = s
        .client
        .post(s.url(&format!("/v1/services/default/instances/{}/drain", a.id)))
        .header("X-Lease", &a.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], a.id.as_str());
    assert_eq!(body["state"], "draining");
    for _ in 0..4 {
        assert_eq!(s.servers("").await, vec!["127.0.0.1:7002".to_owned()]);
    }
    let (_, after) = s.get("/servers").await;
    assert_ne!(
        before["version"], after["version"],
        "draining changes the version"
    );
    assert_eq!(
        s.heartbeat(&a, 5).await.0,
        200,
        "a draining instance keeps heartbeating"
    );
    assert_eq!(
        s.instance("default", &a.id).await.unwrap()["state"],
        "draining"
    );
    let resp = s
        .client
        .post(s.url(&format!("/v1/services/default/instances/{}/drain", b.id)))
        .header("X-Lease", &a.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "a lease only works for its own instance"
    );
}

#[tokio::test]
async fn deregister_answers_204_and_the_instance_is_gone_at_once() {
    let s = Server::start().await;
    let a = s.register_addr("default", "127.0.0.1:7001").await;
    let path = format!("/v1/services/default/instances/{}", a.id);
    let resp = s
        .client
        .delete(s.url(&path))
        .header("X-Lease", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = s
        .client
        .delete(s.url(&path))
        .header("X-Lease", &a.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(s.servers("").await.is_empty());
    assert_eq!(s.heartbeat(&a, 1).await.0, 404);
    let resp = s
        .client
        .delete(s.url(&path))
        .header("X-Lease", &a.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn servers_answers_json_text_and_empty_for_unknown_services() {
    let s = Server::start().await;
    let (status, body) = s.get("/servers?service=nobody-here").await;
    assert_eq!(status, 200);
    assert_eq!(body["service"], "nobody-here");
    assert_eq!(body["servers"], json!([]));
    s.register(
        "mqtt",
        json!({"address": "127.0.0.1:7001", "zone": "eu-1", "weight": 2}),
    )
    .await;
    s.register_addr("mqtt", "127.0.0.1:7002").await;
    let (_, body) = s.get("/servers?service=mqtt&limit=1").await;
    let servers = body["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    for field in ["id", "address", "zone", "weight", "connections", "load"] {
        assert!(servers[0].get(field).is_some(), "missing {field} in {body}");
    }
    assert!(body["version"].is_u64());
    let resp = s
        .client
        .get(s.url("/servers?service=mqtt"))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    for (query, expected) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=101", "invalid_limit"),
        ("?limit=x", "invalid_limit"),
        ("?service=UP", "invalid_service"),
        ("?since=1&wait_secs=61", "invalid_wait"),
        ("?since=1&wait_secs=0", "invalid_wait"),
        ("?since=-1&wait_secs=1", "invalid_since"),
        ("?zone=a%20b", "invalid_zone"),
    ] {
        let (status, body) = s.get(&format!("/servers{query}")).await;
        assert_eq!((status, code(&body)), (400, expected), "{query}");
    }
}

#[tokio::test]
async fn blocking_query_waits_for_a_version_change() {
    let s = Server::start().await;
    s.register_addr("default", "127.0.0.1:7001").await;
    let (_, body) = s.get("/servers").await;
    let version = body["version"].as_u64().unwrap();
    // A different version answers at once.
    let (status, now) = s
        .get(&format!("/servers?since={}&wait_secs=30", version + 1000))
        .await;
    assert_eq!(status, 200);
    assert_eq!(now["version"], version);
    // The same version waits until a registration changes it.
    let waiter = {
        let api = (*s).clone();
        let path = format!("/servers?since={version}&wait_secs=30");
        tokio::spawn(async move { api.get(&path).await.1 })
    };
    // Five seconds of server time (well under wait_secs), each step after a round
    // trip that lets the server take the waiting request in.
    for _ in 0..10 {
        assert_eq!(s.get("/healthz").await.0, 200);
        common::jump(Duration::from_millis(500)).await;
    }
    assert!(!waiter.is_finished(), "answered before anything changed");
    s.register_addr("default", "127.0.0.1:7002").await;
    let answer = tokio::time::timeout(common::PATIENCE, waiter)
        .await
        .expect("the waiter was not woken")
        .unwrap();
    assert_ne!(answer["version"], version);
    assert_eq!(common::addresses(&answer).len(), 2);
    // Without a change, the wait ends after wait_secs with the current list (server
    // time, which the test moves on in steps).
    let started = tokio::time::Instant::now();
    let waiter = {
        let api = (*s).clone();
        let path = format!("/servers?since={}&wait_secs=1", answer["version"]);
        tokio::spawn(async move { api.get(&path).await })
    };
    common::as_time_passes("the wait to end", Duration::from_millis(100), || async {
        waiter.is_finished().then_some(())
    })
    .await;
    let (status, body) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["version"], answer["version"]);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn admin_listings_show_states_and_counts() {
    let s = Server::start().await;
    let a = s
        .register(
            "default",
            json!({"address": "127.0.0.1:7001", "tags": ["v2"], "metadata": {"build": "1.4.2"}}),
        )
        .await;
    let b = s.register_addr("default", "127.0.0.1:7002").await;
    s.register_addr("mqtt", "127.0.0.1:7003").await;
    s.heartbeat(&a, 10).await;
    s.heartbeat(&b, 5).await;
    s.client
        .post(s.url(&format!("/v1/services/default/instances/{}/drain", b.id)))
        .header("X-Lease", &b.lease)
        .send()
        .await
        .unwrap();
    let (status, body) = s.get("/v1/services").await;
    assert_eq!(status, 200);
    let services = body["services"].as_array().unwrap();
    let default = services.iter().find(|x| x["name"] == "default").unwrap();
    assert_eq!(default["live"], 1);
    assert_eq!(default["draining"], 1);
    assert_eq!(default["expired"], 0);
    assert_eq!(default["connections"], 15);
    assert_eq!(default["self_preservation"], false);
    assert!(services.iter().any(|x| x["name"] == "mqtt"));
    let listed = s.instance("default", &a.id).await.unwrap();
    for field in [
        "state",
        "connections",
        "pending",
        "load",
        "last_heartbeat_ms_ago",
        "registered_at",
    ] {
        assert!(listed.get(field).is_some(), "missing {field}: {listed}");
    }
    assert_eq!(listed["state"], "up");
    assert_eq!(listed["tags"], json!(["v2"]));
    assert_eq!(listed["metadata"]["build"], "1.4.2");
    assert!(
        listed.get("lease").is_none() && listed.get("lease_hash").is_none(),
        "leases never leave the registry"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let s = Server::start().await;
    let (status, body) = s.get("/nope").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let resp = s.client.delete(s.url("/servers")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "method_not_allowed");
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn tokens_guard_their_endpoints() {
    // A process: the read token comes from the environment, which an in-process
    // server cannot be given without racing the other tests' threads.
    let s = common::process::Server::start_with(Options {
        config: Some(
            "[tokens]\nadmin = \"adm-secret\"\nregister = [\"reg-one\", \"reg-two\"]\n".into(),
        ),
        env: vec![("SWITCHBOARD_READ_TOKEN".into(), "read-secret".into())],
        ..Options::default()
    });
    let path = s.url("/v1/services/default/instances");
    let body = json!({"address": "127.0.0.1:7001"});
    let send = |token: Option<&str>| {
        let mut req = s.client.post(&path).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let resp = send(None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(code(&resp.json().await.unwrap()), "unauthorized");
    assert_eq!(send(Some("reg-wrong")).await.unwrap().status(), 401);
    let resp = send(Some("reg-two")).await.unwrap();
    assert_eq!(resp.status(), 201);
    let reg: Value = resp.json().await.unwrap();
    let id = reg["id"].as_str().unwrap();

    // Reads need the read token (or admin).
    assert_eq!(s.get("/servers").await.0, 401);
    let read = |t: &str| s.client.get(s.url("/servers")).bearer_auth(t).send();
    assert_eq!(read("read-secret").await.unwrap().status(), 200);
    assert_eq!(read("adm-secret").await.unwrap().status(), 200);
    assert_eq!(read("reg-one").await.unwrap().status(), 401);

    // Admin endpoints need the admin token; health checks stay open.
    assert_eq!(s.get("/v1/services").await.0, 401);
    assert_eq!(s.get("/v1/services/default/instances").await.0, 401);
    let admin = s
        .client
        .get(s.url("/v1/services"))
        .bearer_auth("adm-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert_eq!(s.get("/healthz").await.0, 200);

    // Drain without a lease needs the admin token.
    let drain = s.url(&format!("/v1/services/default/instances/{id}/drain"));
    assert_eq!(s.client.post(&drain).send().await.unwrap().status(), 401);
    let resp = s
        .client
        .post(&drain)
        .bearer_auth("adm-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let del = s.url(&format!("/v1/services/default/instances/{id}"));
    assert_eq!(
        s.client
            .delete(&del)
            .bearer_auth("reg-one")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.client
            .delete(&del)
            .bearer_auth("adm-secret")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}
