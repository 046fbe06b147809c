//! Prometheus against a live registry (SPEC section 10): `GET /v1/sd/prometheus` read
//! directly, then by a real Prometheus (Debian's package) through `http_sd_configs`,
//! which must discover the instances with their labels and scrape each backend's
//! metrics port taken from its metadata; and `/metrics` passed through Prometheus' own
//! linter, `promtool check metrics`. Loopback only; Prometheus and promtool are child
//! processes stopped by the test.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;

use common::{Options, Server, eventually, jump, tools};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const READ_TOKEN: &str = "sd-read-secret";

fn labels(group: &Value) -> &serde_json::Map<String, Value> {
    group["labels"].as_object().expect("labels")
}

/// The group whose `__meta_switchboard_id` is `id`.
fn group_of<'a>(groups: &'a [Value], id: &str) -> Option<&'a Value> {
    groups
        .iter()
        .find(|g| labels(g)["__meta_switchboard_id"] == id)
}

async fn sd(s: &Server, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = s.client.get(s.url(&format!("/v1/sd/prometheus{query}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("GET /v1/sd/prometheus");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sd_lists_live_instances_with_consul_style_labels_and_metrics_ports() {
    let s = Server::start_with(Options {
        config: Some(format!("[tokens]\nread = \"{READ_TOKEN}\"\n")),
        ..Options::default()
    })
    .await;
    let a = s
        .register(
            "mqtt",
            json!({"address": "127.0.0.1:1883", "zone": "eu-1", "tags": ["v2", "tls"],
                   "metadata": {"metrics_port": "9100", "rack-id": "r7"}, "ttl_secs": 300}),
        )
        .await;
    let b = s
        .register(
            "mqtt",
            json!({"address": "[::1]:1884", "metadata": {"metrics_port": "not-a-port"},
                   "ttl_secs": 300}),
        )
        .await;
    let short = s
        .register("mqtt", json!({"address": "127.0.0.1:1885", "ttl_secs": 3}))
        .await;
    let other = s
        .register("im", json!({"address": "127.0.0.1:5222", "ttl_secs": 300}))
        .await;
    let drained = s
        .client
        .post(s.url(&format!("/v1/services/mqtt/instances/{}/drain", b.id)))
        .header("X-Lease", &b.lease)
        .send()
        .await
        .expect("drain");
    assert_eq!(drained.status(), 200);

    // The read token guards it, as it guards /servers.
    assert_eq!(sd(&s, "", None).await.0, 401);
    assert_eq!(sd(&s, "", Some("wrong")).await.0, 401);
    let (status, body) = sd(&s, "?service=bad%20name", Some(READ_TOKEN)).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = sd(&s, "", Some(READ_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let groups = body.as_array().expect("an array of target groups");
    assert_eq!(groups.len(), 4, "{body}");
    let ga = group_of(groups, &a.id).expect("a listed");
    assert_eq!(
        ga["targets"],
        json!(["127.0.0.1:9100"]),
        "metrics_port wins"
    );
    assert_eq!(
        labels(ga),
        json!({
            "__meta_switchboard_service": "mqtt",
            "__meta_switchboard_id": a.id,
            "__meta_switchboard_zone": "eu-1",
            "__meta_switchboard_state": "up",
            "__meta_switchboard_tags": ",v2,tls,",
            "__meta_switchboard_metadata_metrics_port": "9100",
            "__meta_switchboard_metadata_rack_id": "r7",
        })
        .as_object()
        .unwrap()
    );
    let gb = group_of(groups, &b.id).expect("a draining instance is still scraped");
    assert_eq!(
        gb["targets"],
        json!(["[::1]:1884"]),
        "a bad metrics_port is ignored"
    );
    assert_eq!(labels(gb)["__meta_switchboard_state"], "draining");
    assert_eq!(labels(gb)["__meta_switchboard_tags"], ",,");
    assert_eq!(labels(gb)["__meta_switchboard_zone"], "");
    assert!(group_of(groups, &short.id).is_some());
    let gi = group_of(groups, &other.id).expect("every service by default");
    assert_eq!(labels(gi)["__meta_switchboard_service"], "im");

    let (_, only) = sd(&s, "?service=im", Some(READ_TOKEN)).await;
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    let (status, none) = sd(&s, "?service=nobody", Some(READ_TOKEN)).await;
    assert_eq!((status, none), (200, json!([])));

    // An instance past its TTL is not live: it leaves the targets.
    jump(std::time::Duration::from_secs(5)).await;
    let (_, body) = sd(&s, "?service=mqtt", Some(READ_TOKEN)).await;
    let ids: BTreeSet<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|g| labels(g)["__meta_switchboard_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([a.id.as_str(), b.id.as_str()]));
    s.stop().await;
}

/// A backend's own metrics listener: every request gets `devices_connected` with the
/// given value, in the text format.
async fn metrics_backend(value: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                // Read the request head (bounded); Prometheus sends no body.
                while got < buf.len() {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = format!(
                    "# HELP devices_connected Devices connected now.\n\
                     # TYPE devices_connected gauge\ndevices_connected {value}\n"
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// Scrapes every second what the registry's discovery lists for `mqtt`, with the read
/// token, and keeps service, zone and id as target labels. `type: Bearer` is spelled
/// out: Prometheus 2.42 (Debian 12's) sends the bare credentials in http_sd's
/// `Authorization` header without it, which the registry refuses (401).
const PROMETHEUS_YML: &str = r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: fleet
    http_sd_configs:
      - url: REGISTRY/v1/sd/prometheus?service=mqtt
        refresh_interval: 1s
        authorization:
          type: Bearer
          credentials: TOKEN
    relabel_configs:
      - source_labels: [__meta_switchboard_service]
        target_label: service
      - source_labels: [__meta_switchboard_zone]
        target_label: zone
      - source_labels: [__meta_switchboard_id]
        target_label: instance_id
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn prometheus_get(client: &reqwest::Client, base: &str, path: &str) -> Option<Value> {
    let resp = client.get(format!("{base}{path}")).send().await.ok()?;
    resp.json().await.ok()
}

#[tokio::test]
async fn a_real_prometheus_discovers_the_fleet_and_scrapes_each_metrics_port() {
    let test = "a_real_prometheus_discovers_the_fleet_and_scrapes_each_metrics_port";
    if !tools::tools_ready(test, &["prometheus"], &[]) {
        return;
    }
    let s = Server::start_with(Options {
        config: Some(format!("[tokens]\nread = \"{READ_TOKEN}\"\n")),
        ..Options::default()
    })
    .await;
    let m1 = metrics_backend(11).await;
    let m2 = metrics_backend(22).await;
    let mut ids = Vec::new();
    for (n, (metrics, zone)) in [(m1, "eu-1"), (m2, "eu-2")].into_iter().enumerate() {
        // The device port is not the metrics port: nothing listens on it.
        let device_port = 21_000 + n;
        let r = s
            .register(
                "mqtt",
                json!({"address": format!("127.0.0.1:{device_port}"), "zone": zone,
                       "tags": ["broker"], "ttl_secs": 300,
                       "metadata": {"metrics_port": metrics.port().to_string()}}),
            )
            .await;
        ids.push(r.id);
    }
    // Another service's instance, left out by `?service=mqtt`.
    s.register("im", json!({"address": "127.0.0.1:5222", "ttl_secs": 300}))
        .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let web = free_port();
    let config = PROMETHEUS_YML
        .replace("REGISTRY", &s.base)
        .replace("TOKEN", READ_TOKEN);
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let base = format!("http://127.0.0.1:{web}");
    let client = switchboard::tls::client::reqwest_client();

    // Discovery: both mqtt instances, at their metrics ports, with their labels.
    let targets = eventually("prometheus to scrape both instances", || async {
        let body = prometheus_get(&client, &base, "/api/v1/targets?state=active").await?;
        let active = body["data"]["activeTargets"].as_array()?.clone();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        (active.len() == 2 && up == 2).then_some(active)
    })
    .await;
    let mut scraped: Vec<(String, String)> = targets
        .iter()
        .map(|t| {
            let d = &t["discoveredLabels"];
            assert_eq!(d["__meta_switchboard_service"], "mqtt", "{t}");
            assert_eq!(d["__meta_switchboard_tags"], ",broker,", "{t}");
            assert_eq!(d["__meta_switchboard_state"], "up", "{t}");
            assert_eq!(t["labels"]["service"], "mqtt", "{t}");
            (
                t["labels"]["instance"].as_str().unwrap().to_owned(),
                t["labels"]["zone"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    scraped.sort();
    let mut want = vec![
        (m1.to_string(), "eu-1".to_owned()),
        (m2.to_string(), "eu-2".to_owned()),
    ];
    want.sort();
    assert_eq!(
        scraped, want,
        "scraped at the metrics ports, zones relabelled"
    );

    // The backends' own samples, labelled with the registry's instance ids.
    let samples = eventually("the backends' samples in Prometheus", || async {
        let body = prometheus_get(&client, &base, "/api/v1/query?query=devices_connected").await?;
        let result = body["data"]["result"].as_array()?.clone();
        (result.len() == 2).then_some(result)
    })
    .await;
    let mut by_id: Vec<(String, String)> = samples
        .iter()
        .map(|r| {
            (
                r["metric"]["instance_id"].as_str().unwrap().to_owned(),
                r["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_id.sort();
    let mut want = vec![
        (ids[0].clone(), "11".to_owned()),
        (ids[1].clone(), "22".to_owned()),
    ];
    want.sort();
    assert_eq!(by_id, want);

    prometheus.start_kill().expect("stop prometheus");
    let _ = prometheus.wait().await;
    s.stop().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics_of_a_busy_server() {
    let test = "promtool_accepts_the_metrics_of_a_busy_server";
    if !tools::tools_ready(test, &["promtool"], &[]) {
        return;
    }
    let echo = common::Echo::start().await;
    let s = Server::start_with(Options {
        config: Some(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"lint\"\n\n\
             [dns]\nlisten = \"127.0.0.1:0\"\ndomain = \"fleet.test\"\n"
                .into(),
        ),
        forwards: 1,
        ..Options::default()
    })
    .await;
    // Move every kind of family: registrations, heartbeats with a shed, hand-outs,
    // relayed bytes, HTTP durations, store batches, a DNS query.
    let r = s
        .register("lint", json!({"address": echo.addr.to_string()}))
        .await;
    s.heartbeat(&r, 3).await;
    s.servers("?service=lint").await;
    let mut device = tokio::net::TcpStream::connect(s.forward_addrs[0])
        .await
        .expect("connect through the forwarder");
    device.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    device.read_exact(&mut back).await.unwrap();
    drop(device);
    let dns = s.dns_addr.expect("the DNS listener");
    let mut query = hickory_proto::op::Message::query();
    query.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("lint.fleet.test.").unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query.to_vec().unwrap(), dns).await.unwrap();
    let mut answer = vec![0u8; 4096];
    tokio::time::timeout(common::PATIENCE, socket.recv_from(&mut answer))
        .await
        .expect("a DNS answer in time")
        .expect("a DNS answer");
    let text = s.metrics_text().await;
    for family in [
        "switchboard_forward_bytes_total",
        "switchboard_dns_queries_total",
    ] {
        assert!(text.contains(family), "{family} missing: {text}");
    }

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(common::PATIENCE, promtool.wait_with_output())
        .await
        .expect("promtool in time")
        .expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {said}\n{text}"
    );
    // Every family has its HELP line (promtool says "no help text" otherwise).
    for family in switchboard::metrics::FAMILIES {
        if text.contains(&format!("# TYPE {} ", family.name)) {
            assert!(
                text.contains(&format!("# HELP {} ", family.name)),
                "{}",
                family.name
            );
        }
    }
    s.stop().await;
}
