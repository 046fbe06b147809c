//! `GET /metrics` of SPEC section 2: every metric family moves when its event
//! happens. The recorder is global to the test process, so each test uses services
//! of its own and compares values before and after.

mod common;

use std::collections::BTreeMap;

use common::{Echo, Options, Server, as_time_passes, eventually};
use serde_json::json;
use switchboard::upkeep::SWEEP_EVERY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The sum of every sample of `name` whose labels include `want`.
async fn metric(s: &Server, name: &str, want: &[(&str, &str)]) -> f64 {
    let resp = switchboard::tls::client::reqwest_client()
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    parse(&text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn registry_events_move_their_families() {
    let s = Server::start().await;
    let svc = [("service", "m-registry")];
    s.register("m-registry", json!({"address": "127.0.0.1:7101"}))
        .await;
    // Registering the address again replaces its lease: heartbeats use the new one.
    let a = s
        .register("m-registry", json!({"address": "127.0.0.1:7101"}))
        .await;
    let b = s
        .register("m-registry", json!({"address": "127.0.0.1:7102"}))
        .await;
    let created = [("service", "m-registry"), ("outcome", "created")];
    let replaced = [("service", "m-registry"), ("outcome", "replaced")];
    assert_eq!(
        metric(&s, "switchboard_registrations_total", &created).await,
        2.0
    );
    assert_eq!(
        metric(&s, "switchboard_registrations_total", &replaced).await,
        1.0
    );

    // a: 1000 against a mean of 500 is asked to shed 1 % of it, each heartbeat.
    let (status, answer) = s.heartbeat(&a, 1_000).await;
    assert_eq!((status, answer["shed"].as_u64()), (200, Some(10)));
    let (_, answer) = s.heartbeat(&b, 0).await;
    assert_eq!(answer["shed"], 0);
    assert_eq!(metric(&s, "switchboard_heartbeats_total", &svc).await, 2.0);
    assert_eq!(metric(&s, "switchboard_shed_hints_total", &svc).await, 1.0);
    let (_, answer) = s.heartbeat(&a, 1_000).await;
    assert_eq!(answer["shed"], 10);
    assert_eq!(metric(&s, "switchboard_shed_hints_total", &svc).await, 2.0);
    assert_eq!(
        metric(&s, "switchboard_shed_connections_total", &svc).await,
        20.0
    );
    assert_eq!(metric(&s, "switchboard_connections", &svc).await, 1_000.0);

    s.servers("?service=m-registry").await;
    assert_eq!(
        metric(&s, "switchboard_servers_answers_total", &svc).await,
        1.0
    );
    assert_eq!(
        metric(&s, "switchboard_pending_handouts", &svc).await,
        1.0,
        "the hand-out"
    );
    s.servers("?service=m-nobody-has-this").await;
    assert_eq!(
        metric(
            &s,
            "switchboard_servers_answers_total",
            &[("service", "m-nobody-has-this")]
        )
        .await,
        0.0,
        "an unknown name is not a label value"
    );

    let up = [("service", "m-registry"), ("state", "up")];
    let draining = [("service", "m-registry"), ("state", "draining")];
    assert_eq!(metric(&s, "switchboard_instances", &up).await, 2.0);
    let drain = s.url(&format!("/v1/services/m-registry/instances/{}/drain", b.id));
    let resp = s
        .client
        .post(drain)
        .header("X-Lease", &b.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(metric(&s, "switchboard_instances", &up).await, 1.0);
    assert_eq!(metric(&s, "switchboard_instances", &draining).await, 1.0);

    let del = s.url(&format!("/v1/services/m-registry/instances/{}", b.id));
    let resp = s
        .client
        .delete(del)
        .header("X-Lease", &b.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let gone = [("service", "m-registry"), ("reason", "deregistered")];
    assert_eq!(metric(&s, "switchboard_removals_total", &gone).await, 1.0);

    let route = [("route", "/servers"), ("method", "GET"), ("status", "200")];
    assert!(
        metric(
            &s,
            "switchboard_http_request_duration_seconds_count",
            &route
        )
        .await
            >= 2.0
    );
    let writes = [("op", "register"), ("outcome", "ok")];
    assert!(
        metric(
            &s,
            "switchboard_store_write_duration_seconds_count",
            &writes
        )
        .await
            >= 3.0
    );
    s.stop().await;
}

#[tokio::test]
async fn expiry_removal_self_preservation_and_batches_move_their_families() {
    let s = Server::start().await;
    let svc = [("service", "m-liveness")];
    let mut fleet = Vec::new();
    for port in 7201..7204 {
        fleet.push(
            s.register(
                "m-liveness",
                json!({"address": format!("127.0.0.1:{port}"), "ttl_secs": 1}),
            )
            .await,
        );
    }
    let lone = s
        .register(
            "m-lone",
            json!({"address": "127.0.0.1:7210", "ttl_secs": 1}),
        )
        .await;
    assert_eq!(s.heartbeat(&lone, 3).await.0, 200);
    as_time_passes("a heartbeat batch", SWEEP_EVERY, || async {
        (metric(&s, "switchboard_heartbeat_batch_size_count", &[]).await >= 1.0).then_some(())
    })
    .await;
    // All three stop at once: the registry suspects its own network.
    as_time_passes("self-preservation", SWEEP_EVERY, || async {
        (metric(&s, "switchboard_self_preservation", &svc).await == 1.0).then_some(())
    })
    .await;
    // The lone instance expires and is removed as usual.
    let lone_svc = [("service", "m-lone")];
    as_time_passes("the lone instance removed", SWEEP_EVERY, || async {
        let removed = [("service", "m-lone"), ("reason", "expired")];
        (metric(&s, "switchboard_removals_total", &removed).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&s, "switchboard_expiries_total", &lone_svc).await,
        1.0
    );
    // Self-preservation ends at the latest after 3 x ttl: then the fleet expires.
    as_time_passes("self-preservation over", SWEEP_EVERY, || async {
        (metric(&s, "switchboard_self_preservation", &svc).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(metric(&s, "switchboard_expiries_total", &svc).await, 3.0);
    drop(fleet);
    s.stop().await;
}

#[tokio::test]
async fn forwarded_connections_move_their_families() {
    let echo = Echo::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = Server::start_with(Options {
        config: Some(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"m-forward\"\nmax_connections = 1\n"
                .into(),
        ),
        forwards: 1,
        ..Options::default()
    })
    .await;
    let listener = s.forward_addrs[0].to_string();
    let by = [("listener", listener.as_str())];
    // The dead backend reports fewer connections, so it is tried first.
    let good = s
        .register("m-forward", json!({"address": echo.addr.to_string()}))
        .await;
    let bad = s
        .register("m-forward", json!({"address": dead.to_string()}))
        .await;
    s.heartbeat(&good, 5).await;
    s.heartbeat(&bad, 0).await;

    let mut device = tokio::net::TcpStream::connect(s.forward_addrs[0])
        .await
        .unwrap();
    device.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    device.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(
        metric(&s, "switchboard_forward_connections_total", &by).await,
        1.0
    );
    assert_eq!(
        metric(&s, "switchboard_forward_connections_active", &by).await,
        1.0
    );
    assert_eq!(
        metric(&s, "switchboard_forward_connect_failures_total", &by).await,
        1.0
    );
    assert_eq!(
        metric(&s, "switchboard_forward_retries_total", &by).await,
        1.0
    );
    let (status, body) = s.get("/v1/forwarders").await;
    assert_eq!(status, 200);
    assert_eq!(body["forwarders"][0]["active"], 1, "{body}");
    assert_eq!(body["forwarders"][0]["service"], "m-forward");

    // max_connections = 1: a second device is refused.
    let mut second = tokio::net::TcpStream::connect(s.forward_addrs[0])
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(common::PATIENCE, second.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {read:?}"
    );
    // Counted with its reason: the configured cap, not the fd budget.
    let at_cap = [
        ("listener", listener.as_str()),
        ("reason", "max_connections"),
    ];
    eventually("the refusal counted", || async {
        (metric(&s, "switchboard_forward_refused_total", &at_cap).await == 1.0).then_some(())
    })
    .await;
    let at_budget = [("listener", listener.as_str()), ("reason", "fd_budget")];
    assert_eq!(
        metric(&s, "switchboard_forward_refused_total", &at_budget).await,
        0.0
    );

    drop(device);
    eventually("the relay's bytes counted", || async {
        let up = [("listener", listener.as_str()), ("direction", "up")];
        let down = [("listener", listener.as_str()), ("direction", "down")];
        let counted = metric(&s, "switchboard_forward_bytes_total", &up).await == 4.0
            && metric(&s, "switchboard_forward_bytes_total", &down).await == 4.0
            && metric(&s, "switchboard_forward_connections_active", &by).await == 0.0;
        counted.then_some(())
    })
    .await;
    s.stop().await;
    echo.stop();
}

#[tokio::test]
async fn metrics_need_the_admin_token_when_one_is_set() {
    let s = Server::start_with(Options {
        config: Some("[tokens]\nadmin = \"adm\"\n".into()),
        ..Options::default()
    })
    .await;
    let resp = switchboard::tls::client::reqwest_client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = switchboard::tls::client::reqwest_client()
        .get(s.url("/v1/forwarders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    s.stop().await;
}
