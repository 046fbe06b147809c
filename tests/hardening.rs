//! Hostile and careless clients (SPEC section 6): reads of names that have no service
//! leave nothing behind.

mod common;

use std::time::Duration;

use common::process::Server;
use common::{Options, eventually};
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn reads_of_unknown_services_leave_nothing_behind() {
    let s = Server::start_with(Options::default());
    s.register_addr("real", "127.0.0.1:7001").await;
    let (_, before) = s.get("/v1/services").await;
    // Warm up the allocator and connection pool before the baseline.
    for i in 0..200 {
        s.get(&format!("/servers?service=warm-{i}")).await;
    }
    let rss_before = rss_kib(s.pid());
    let client = s.client.clone();
    let base = s.url("");
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1_250 {
                let name = format!("ghost-{worker}-{i}");
                // Plain and blocking (`since` differs from an unknown service's 0).
                let path = if i % 2 == 0 {
                    format!("{base}/servers?service={name}")
                } else {
                    format!("{base}/servers?service={name}&since=1&wait_secs=1")
                };
                let resp = client.get(path).send().await.expect("GET /servers");
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, after) = s.get("/v1/services").await;
    assert_eq!(after, before, "no service was created by a read");
    let grown = rss_kib(s.pid()).saturating_sub(rss_before);
    // The old code kept ~1 KiB per name: 10,000 names grew it by ~10 MiB.
    assert!(
        grown < 3 * 1024,
        "RSS grew by {grown} KiB over 10,000 unknown reads"
    );
    let (_, listing) = s.get("/v1/services/ghost-0-1/instances").await;
    assert_eq!(listing["instances"], json!([]));
}

#[tokio::test]
async fn a_blocking_read_of_a_name_wakes_when_the_service_appears_and_leaves_nothing_if_not() {
    let s = Server::start_with(Options::default());
    let client = s.client.clone();
    let url = s.url("/servers?service=later&since=0&wait_secs=30");
    let waiting = tokio::spawn(async move {
        let resp = client.get(url).send().await.unwrap();
        resp.json::<serde_json::Value>().await.unwrap()
    });
    // The waiter creates nothing while it waits.
    eventually("the waiter to be parked", || async {
        let (_, services) = s.get("/v1/services").await;
        let names: Vec<String> = services["services"]
            .as_array()?
            .iter()
            .map(|x| x["name"].as_str().unwrap_or("").to_owned())
            .collect();
        (!names.contains(&"later".to_owned())).then_some(())
    })
    .await;
    s.register_addr("later", "127.0.0.1:7002").await;
    let answer = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("woken by the registration")
        .unwrap();
    assert_eq!(common::addresses(&answer), ["127.0.0.1:7002"]);
}

#[tokio::test]
async fn a_service_whose_last_instance_left_is_dropped() {
    let s = Server::start_with(Options::default());
    let r = s.register_addr("brief", "127.0.0.1:7003").await;
    let del = s.url(&format!("/v1/services/brief/instances/{}", r.id));
    let resp = s
        .client
        .delete(del)
        .header("X-Lease", &r.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, services) = s.get("/v1/services").await;
    let names: Vec<&str> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"], "brief is gone, default stays implicit");
}
