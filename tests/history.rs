//! `GET /v1/history` on the real server in-process (`app::start`, port 0, one sample a
//! second): instances register and heartbeat changing counts, a scale-out is handed
//! out and shed towards, an instance is drained and evacuated, and the history shows
//! each step, every series aligned with the sample times. Time moves by jumps of the
//! tokio clock the sampler runs on (`as_time_passes`), never by sleeps.

mod common;

use std::time::Duration;

use common::{Api, Options, Registered, Server, as_time_passes};
use serde_json::{Value, json};

const READ: &str = "rd";
const STEP: Duration = Duration::from_millis(500);

async fn server() -> Server {
    Server::start_with(Options {
        config: Some(format!(
            "[tokens]\nread = \"{READ}\"\n[dashboard]\nhistory_sample_secs = 1\nhistory_minutes = 1\n"
        )),
        ..Options::default()
    })
    .await
}

/// `GET` with the read token: (status, body).
async fn get(s: &Api, path: &str) -> (u16, Value) {
    let resp = s
        .client
        .get(s.url(path))
        .bearer_auth(READ)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn history(s: &Api) -> Value {
    let (status, body) = get(s, "/v1/history?service=default").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn register(s: &Api, address: &str) -> Registered {
    s.register("default", json!({"address": address, "ttl_secs": 300}))
        .await
}

async fn beat(s: &Api, r: &Registered, connections: u64) -> u64 {
    let (status, body) = s.heartbeat(r, connections).await;
    assert_eq!(status, 200, "{body}");
    body["shed"].as_u64().expect("shed")
}

/// The last value of a series.
fn last(series: &Value) -> Option<u64> {
    series.as_array()?.last()?.as_u64()
}

/// The instance series of `address` in a service's history.
fn instance<'a>(service: &'a Value, address: &str) -> Option<&'a Value> {
    service["instances"]
        .as_array()?
        .iter()
        .find(|i| i["address"] == address)
}

/// Waits (as server time passes) until the newest sample of `default` satisfies `ok`.
async fn until(s: &Api, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    as_time_passes(what, STEP, || async {
        let body = history(s).await;
        let service = body["services"].get(0)?;
        ok(service).then_some(body)
    })
    .await
}

fn assert_aligned(body: &Value) {
    let times = body["times_ms"].as_array().expect("times_ms");
    assert!(!times.is_empty());
    assert!(
        times.len() <= 60,
        "at most history_minutes × 60 / history_sample_secs"
    );
    let ms: Vec<u64> = times.iter().map(|t| t.as_u64().expect("ms")).collect();
    assert!(ms.windows(2).all(|w| w[0] < w[1]), "times rise: {ms:?}");
    for service in body["services"].as_array().expect("services") {
        for key in [
            "connections",
            "up",
            "draining",
            "expired",
            "hand_outs",
            "shed_hints",
            "shed_connections",
        ] {
            let n = service[key].as_array().map(Vec::len);
            assert_eq!(n, Some(times.len()), "{key} of {}", service["name"]);
        }
        for i in service["instances"].as_array().expect("instances") {
            assert_eq!(i["connections"].as_array().map(Vec::len), Some(times.len()));
            assert_eq!(i["states"].as_str().map(str::len), Some(times.len()));
        }
    }
}

#[tokio::test]
async fn history_follows_a_scale_out_and_a_drain() {
    let s = server().await;
    // The read token guards it, as /servers; names are checked.
    let (status, _) = s.get("/v1/history").await;
    assert_eq!(status, 401);
    let (status, body) = get(&s, "/v1/history?service=Not%20A%20Name").await;
    assert_eq!((status, common::code(&body)), (400, "invalid_service"));
    let (status, body) = get(&s, "/v1/history?service=nope").await;
    assert_eq!(status, 200);
    assert_eq!(body["services"], json!([]));
    assert_eq!(
        (body["sample_secs"].as_u64(), body["samples"].as_u64()),
        (Some(1), Some(60))
    );

    let a = register(&s, "10.0.0.1:6666").await;
    let b = register(&s, "10.0.0.2:6666").await;
    beat(&s, &a, 100).await;
    beat(&s, &b, 100).await;
    let body = until(&s, "two instances of 100", |svc| {
        last(&svc["connections"]) == Some(200) && last(&svc["up"]) == Some(2)
    })
    .await;
    let svc = &body["services"][0];
    assert_eq!(svc["name"], "default");
    let a_series = instance(svc, "10.0.0.1:6666").expect("a's series");
    assert_eq!(a_series["id"], a.id.as_str());
    assert_eq!(last(&a_series["connections"]), Some(100));
    assert!(
        a_series["states"]
            .as_str()
            .is_some_and(|st| st.ends_with('u'))
    );

    // Scale-out: c joins empty; devices asking /servers are handed c first, and the
    // busy ones are asked to shed towards it.
    let c = register(&s, "10.0.0.3:6666").await;
    beat(&s, &c, 0).await;
    for _ in 0..3 {
        let (status, body) = get(&s, "/servers?service=default&limit=1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(common::addresses(&body), ["10.0.0.3:6666"]);
    }
    let shed = beat(&s, &a, 100).await;
    assert!(shed > 0, "a over the mean with a hole is asked to shed");
    let body = until(&s, "c handed out and the shed hint counted", |svc| {
        let sum = |key: &str| -> u64 {
            svc[key]
                .as_array()
                .map_or(0, |v| v.iter().filter_map(Value::as_u64).sum())
        };
        sum("hand_outs") >= 3 && sum("shed_hints") >= 1 && last(&svc["up"]) == Some(3)
    })
    .await;
    let svc = &body["services"][0];
    let c_series = instance(svc, "10.0.0.3:6666").expect("c's series");
    let states = c_series["states"].as_str().expect("states");
    assert!(
        states.starts_with('-') && states.ends_with('u'),
        "c came later: {states}"
    );
    let shed_connections: u64 = svc["shed_connections"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert!(shed_connections >= shed, "{svc}");
    assert_aligned(&body);

    // Converged: the heartbeats' counts move, and the history shows them.
    beat(&s, &a, 70).await;
    beat(&s, &b, 70).await;
    beat(&s, &c, 60).await;
    until(&s, "the converged counts", |svc| {
        instance(svc, "10.0.0.3:6666").and_then(|i| last(&i["connections"])) == Some(60)
            && last(&svc["connections"]) == Some(200)
    })
    .await;

    // Evacuation: b drained at a pace, its count falls to 0 while it stays draining.
    let resp = s
        .client
        .post(s.url(&format!("/v1/services/default/instances/{}/drain", b.id)))
        .header("X-Lease", &b.lease)
        .json(&json!({"evacuate_per_sec": 10}))
        .send()
        .await
        .expect("drain");
    assert_eq!(resp.status(), 200);
    assert!(
        beat(&s, &b, 70).await > 0,
        "b is asked to shed while evacuating"
    );
    beat(&s, &b, 0).await;
    let body = until(&s, "b drained to 0", |svc| {
        let b = instance(svc, "10.0.0.2:6666");
        b.and_then(|i| last(&i["connections"])) == Some(0)
            && b.and_then(|i| i["states"].as_str())
                .is_some_and(|st| st.ends_with('d'))
            && last(&svc["draining"]) == Some(1)
            && last(&svc["up"]) == Some(2)
    })
    .await;
    let b_series = instance(&body["services"][0], "10.0.0.2:6666").expect("b");
    let counts: Vec<Option<u64>> = b_series["connections"]
        .as_array()
        .expect("series")
        .iter()
        .map(Value::as_u64)
        .collect();
    assert!(
        counts.contains(&Some(100)) && counts.contains(&Some(70)),
        "{counts:?}"
    );

    // Deregistered: absent from then on, its past kept.
    let resp = s
        .client
        .delete(s.url(&format!("/v1/services/default/instances/{}", b.id)))
        .header("X-Lease", &b.lease)
        .send()
        .await
        .expect("deregister");
    assert_eq!(resp.status(), 204);
    let body = until(&s, "b gone", |svc| {
        instance(svc, "10.0.0.2:6666")
            .and_then(|i| i["states"].as_str())
            .is_some_and(|st| st.ends_with('-'))
    })
    .await;
    assert_aligned(&body);
    // Every service, unfiltered: the same series.
    let (status, all) = get(&s, "/v1/history").await;
    assert_eq!(status, 200);
    assert_eq!(all["untracked_services"], 0);
    assert!(
        all["services"].as_array().is_some_and(|l| l.len() == 1),
        "{all}"
    );
    assert_aligned(&all);
}
