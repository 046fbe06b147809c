//! The dashboard (`GET /`) of SPEC section 2 in a real headless browser: Debian's
//! `chromium`, driven by `tests/dashboard/check.mjs` with `playwright-core` from npm.
//!
//! The registry runs in-process with an admin token and a forward listener; three
//! services hold instances that are up, expired, and in self-preservation, and one
//! device is relayed through the forwarder. The script enters the token in the page's
//! form, checks every instance, banner and listener the page shows against what the
//! registry holds, drains an instance through the API and sees the page show it
//! `draining` without a reload (the blocking query woke it). Then, on a service of its
//! own (`pool`), it runs a scale-out and a paced evacuation through the API, one sample
//! a second (`[dashboard] history_sample_secs = 1`), and sees the history charts follow
//! each heartbeat: the new server's line rising to the mean, the busy ones' falling,
//! hand-outs and shed hints counted, the evacuated one dashed down to 0. The node process runs
//! under `tokio::process`, so the test's current-thread runtime keeps serving the
//! page meanwhile.
//!
//! Without `node`, `/usr/bin/chromium` or `tests/dashboard/node_modules` (`npm ci` in
//! `tests/dashboard`) the test fails where `CI` is set and prints `SKIPPED` otherwise.
//! `cargo test --test dashboard -- --ignored screenshot` writes `docs/dashboard.png` and
//! `docs/dashboard-history.png` (the `pool` service's charts).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::certs::Pki;
use common::{Api, Echo, Options, PATIENCE, Registered, Server, as_time_passes, eventually};
use serde_json::{Value, json};
use switchboard::upkeep::SWEEP_EVERY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "adm";
const CHROMIUM: &str = "/usr/bin/chromium";
/// TTL of the instances that stop heartbeating (expired, self-preservation).
const SHORT_TTL: u64 = 30;
/// TTL of the instances that stay up for the whole test.
const LONG_TTL: u64 = 300;
/// The service the script scales out and evacuates while it watches the charts.
const HISTORY_SERVICE: &str = "pool";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Whether node, chromium and playwright-core are there. Missing ones fail the test in
/// CI and skip it (with a `SKIPPED` line) elsewhere.
fn browser_ready(test: &str) -> bool {
    let chromium = format!("{CHROMIUM} (apt-get install chromium)");
    let playwright = dir().join("node_modules/playwright-core/package.json");
    let missing = common::tools::missing(
        &["node"],
        &[
            (Path::new(CHROMIUM), &chromium),
            (&playwright, "playwright-core (npm ci in tests/dashboard)"),
        ],
    );
    common::tools::ready(test, &missing)
}

/// `GET` with the admin token.
async fn admin_get(s: &Api, path: &str) -> Value {
    let resp = s
        .client
        .get(s.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin GET");
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("admin JSON")
}

/// One instance of the fixture and what the page must show for it.
struct Planned {
    reg: Registered,
    address: String,
    zone: &'static str,
    connections: u64,
    /// Keeps heartbeating (up) or stops (expired).
    stays_up: bool,
}

/// The registry's state the page is checked against, and what keeps it so.
struct Fixture {
    plan: Value,
    _echoes: Vec<Echo>,
    _device: TcpStream,
}

/// Three services: `default` (echo backends behind the forwarder, one relayed device,
/// one instance to drain), `mqtt` (one instance expired), `sensors` (three of four
/// expired at once: self-preservation). `s` is the server's API (HTTP or HTTPS),
/// `forward` its forward listener.
async fn fixture(s: &Api, forward: std::net::SocketAddr) -> Fixture {
    let mut echoes = Vec::new();
    for _ in 0..3 {
        echoes.push(Echo::start().await);
    }
    // (service, address, zone, reported connections, keeps heartbeating)
    let mut fleet: Vec<(&str, String, &'static str, u64, bool)> = Vec::new();
    for (echo, (zone, conns)) in echoes
        .iter()
        .zip([("eu-1", 1200), ("eu-1", 950), ("eu-2", 400)])
    {
        fleet.push(("default", echo.addr.to_string(), zone, conns, true));
    }
    for (n, conns) in [5400, 5100, 4800, 3000].into_iter().enumerate() {
        let zone = if n % 2 == 0 { "eu-1" } else { "eu-2" };
        fleet.push((
            "mqtt",
            format!("10.0.1.{}:1883", 11 + n),
            zone,
            conns,
            n != 3,
        ));
    }
    for (n, conns) in [800, 760, 720, 900].into_iter().enumerate() {
        fleet.push((
            "sensors",
            format!("10.0.2.{}:6666", 21 + n),
            "ap-1",
            conns,
            n == 3,
        ));
    }

    let mut planned = Vec::new();
    for (service, address, zone, connections, stays_up) in fleet {
        let ttl = if stays_up { LONG_TTL } else { SHORT_TTL };
        let reg = s
            .register(
                service,
                json!({"address": &address, "zone": zone, "ttl_secs": ttl}),
            )
            .await;
        let (status, body) = s.heartbeat(&reg, connections).await;
        assert_eq!(status, 200, "{body}");
        planned.push(Planned {
            reg,
            address,
            zone,
            connections,
            stays_up,
        });
    }

    // Past one short TTL: those that stopped heartbeating expire, three of four
    // `sensors` at once, which the sweep takes for a partition of its own. The clock
    // moves in sweep-sized steps, not in one jump (store and HTTP timeouts).
    as_time_passes("expiry and self-preservation", SWEEP_EVERY, || async {
        let body = admin_get(s, "/v1/services").await;
        let list = body["services"].as_array()?;
        let sensors = list.iter().find(|x| x["name"] == "sensors")?;
        let mqtt = list.iter().find(|x| x["name"] == "mqtt")?;
        (sensors["self_preservation"] == true && mqtt["expired"] == 1).then_some(())
    })
    .await;
    for p in planned.iter().filter(|p| p.stays_up) {
        let (status, body) = s.heartbeat(&p.reg, p.connections).await;
        assert_eq!(status, 200, "{body}");
    }

    // A device relayed through the forwarder, kept open: one active connection.
    let mut device = TcpStream::connect(forward)
        .await
        .expect("connect forwarder");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(PATIENCE, async {
        device.write_all(b"hello").await?;
        device.read_exact(&mut echoed).await
    })
    .await
    .expect("echo through the forwarder timed out")
    .expect("echo through the forwarder");
    assert_eq!(&echoed, b"hello");
    let listen = forward.to_string();
    eventually("one active forwarded connection", || async {
        let body = admin_get(s, "/v1/forwarders").await;
        (body["forwarders"][0]["active"] == 1).then_some(())
    })
    .await;

    // What the page must show, checked against the registry's own listing first.
    let mut instances = Vec::new();
    for p in &planned {
        let listed = admin_get(s, &format!("/v1/services/{}/instances", p.reg.service)).await;
        let found = listed["instances"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["id"] == p.reg.id.as_str()))
            .unwrap_or_else(|| panic!("{} not listed: {listed}", p.address));
        let state = if p.stays_up { "up" } else { "expired" };
        assert_eq!(found["state"], state, "{found}");
        instances.push(json!({
            "service": p.reg.service, "id": p.reg.id, "address": p.address,
            "zone": p.zone, "connections": p.connections, "state": state,
        }));
    }
    let services = admin_get(s, "/v1/services").await["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|x| {
            json!({"name": x["name"], "connections": x["connections"],
                   "self_preservation": x["self_preservation"]})
        })
        .collect::<Vec<_>>();
    let drained = &planned[1].reg;
    let plan = json!({
        "history": {
            "service": HISTORY_SERVICE,
            "addresses": ["10.0.3.1:7000", "10.0.3.2:7000", "10.0.3.3:7000"],
        },
        "base": s.base,
        "token": TOKEN,
        "chromium": CHROMIUM,
        "instances": instances,
        "services": services,
        "forwarders": [{"listen": listen, "active": 1}],
        "drain": {"service": drained.service, "id": drained.id},
    });
    Fixture {
        plan,
        _echoes: echoes,
        _device: device,
    }
}

/// Runs the browser script on `plan`; returns its output after asserting it passed.
/// With `ca`, Node's own requests trust that CA file (`NODE_EXTRA_CA_CERTS`).
async fn run_script(plan: &Value, ca: Option<&Path>) -> String {
    let started = std::time::Instant::now();
    let mut node = tokio::process::Command::new("node");
    if let Some(ca) = ca {
        node.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let child = node
        .arg("check.mjs")
        .arg(plan.to_string())
        .current_dir(dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser script did not finish within 120 s")
        .expect("browser script output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{stdout}{stderr}browser script took {:?}",
        started.elapsed()
    );
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "PASS"),
        "the dashboard check failed ({}):\n{stdout}{stderr}",
        output.status
    );
    stdout
}

/// The server, on HTTPS with `tls`'s certificate when given.
async fn server(tls: Option<&Pki>) -> Server {
    let tls_section = tls.map(|pki| pki.tls_section("")).unwrap_or_default();
    Server::start_with(Options {
        config: Some(format!(
            "[tokens]\nadmin = \"{TOKEN}\"\n[dashboard]\nhistory_sample_secs = 1\nhistory_minutes = 5\n{tls_section}"
        )),
        forward: vec!["127.0.0.1:0=default".into()],
        forwards: 1,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn page_shows_instances_and_a_drain_without_reload() {
    if !browser_ready("page_shows_instances_and_a_drain_without_reload") {
        return;
    }
    let s = server(None).await;
    let fixture = fixture(&s, s.forward_addrs[0]).await;
    let out = run_script(&fixture.plan, None).await;
    assert!(out.contains("asks for the admin token"), "{out}");
    assert!(out.contains("without a reload"), "{out}");
    assert!(out.contains("scale-out converging"), "{out}");
    assert!(out.contains("evacuation drained to 0"), "{out}");
    // What the charts showed is what /v1/history holds.
    let history = admin_get(&s, &format!("/v1/history?service={HISTORY_SERVICE}")).await;
    let pool = &history["services"][0];
    assert_eq!(
        pool["instances"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    assert_eq!(
        pool["draining"].as_array().and_then(|d| d.last()),
        Some(&json!(1))
    );
    // The page's drain reached the registry: the instance is draining there too.
    let drained = &fixture.plan["drain"];
    let id = drained["id"].as_str().expect("id");
    let listed = admin_get(&s, "/v1/services/default/instances").await;
    let state = listed["instances"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["id"] == id))
        .map(|i| i["state"].clone());
    assert_eq!(state, Some(json!("draining")), "{listed}");
    // The page's blocking queries handed nothing out: the one pending hand-out is the
    // relayed device's (no heartbeat came since).
    let mut pending = 0;
    for service in ["default", "mqtt", "sensors"] {
        let listed = admin_get(&s, &format!("/v1/services/{service}/instances")).await;
        for i in listed["instances"].as_array().expect("instances") {
            pending += i["pending"].as_u64().expect("pending");
        }
    }
    assert_eq!(pending, 1, "pending hand-outs after the page watched");
}

/// The same page over HTTPS (`[tls]`, a private CA): same origin, so unchanged. The
/// browser is told to accept the test CA's certificate; Node's own requests trust it.
#[tokio::test]
async fn page_works_unchanged_over_https() {
    if !browser_ready("page_works_unchanged_over_https") {
        return;
    }
    let pki = Pki::new();
    let s = server(Some(&pki)).await;
    let api = Api::https(s.http_addr, &pki.read("ca.pem"), None);
    assert!(api.base.starts_with("https://"), "{}", api.base);
    let mut fixture = fixture(&api, s.forward_addrs[0]).await;
    fixture.plan["https"] = json!(true);
    let out = run_script(&fixture.plan, Some(&pki.path("ca.pem"))).await;
    assert!(out.contains("without a reload"), "{out}");
    // Plain HTTP on the same port is not served.
    let plain = Api::new(s.http_addr);
    assert!(
        plain
            .client
            .get(plain.url("/healthz"))
            .send()
            .await
            .is_err()
    );
}

/// Writes `docs/dashboard.png` and `docs/dashboard-history.png` (the README's screenshots) after
/// the same checks.
#[tokio::test]
#[ignore = "writes docs/dashboard.png and docs/dashboard-history.png; run with --ignored to refresh them"]
async fn screenshot() {
    if !browser_ready("screenshot") {
        return;
    }
    let s = server(None).await;
    let mut fixture = fixture(&s, s.forward_addrs[0]).await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(path.parent().expect("docs/")).expect("mkdir docs");
    fixture.plan["screenshot"] = json!(path.to_string_lossy());
    let charts = path.with_file_name("dashboard-history.png");
    fixture.plan["screenshot_history"] = json!(charts.to_string_lossy());
    run_script(&fixture.plan, None).await;
    assert!(path.is_file(), "no screenshot at {}", path.display());
    assert!(charts.is_file(), "no screenshot at {}", charts.display());
}
