//! Hostile and careless clients (SPEC sections 4 and 6): reads of names that have no
//! service leave nothing behind, half-sent and idle HTTP connections are closed, a
//! connection cap and a low descriptor limit do not take the API down, and relayed
//! sockets carry TCP keepalive.

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

/// Opens `n` connections that send half a request line and stop.
async fn half_requests(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /servers HT")
            .await
            .expect("half a request line");
        held.push(s);
    }
    held
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    // Bounded: at most a few reads of a 408/400 answer before the EOF.
    for _ in 0..16 {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

fn http_addr(s: &Server) -> std::net::SocketAddr {
    s.url("")
        .trim_start_matches("http://")
        .parse()
        .expect("addr")
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    let s = Server::start_with(Options {
        config: Some("http_header_timeout_secs = 1\n".into()),
        ..Options::default()
    });
    let mut held = half_requests(http_addr(&s), 200).await;
    // Meanwhile everyone else is served.
    assert_eq!(s.get("/servers").await.0, 200);
    for stream in &mut held {
        assert!(
            closed_within(stream, common::PATIENCE).await,
            "a half-sent request was kept open"
        );
    }
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start_with(Options {
        config: Some("http_header_timeout_secs = 1\nhttp_idle_timeout_secs = 3\n".into()),
        ..Options::default()
    });
    let mut conn = tokio::net::TcpStream::connect(http_addr(&s)).await.unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "served");
        // Idle past the header timeout: still open (only the idle timeout closes it).
        assert!(
            !closed_within(&mut conn, Duration::from_millis(1_800)).await,
            "an idle keep-alive connection was closed by the header timeout"
        );
    }
    assert!(
        closed_within(&mut conn, common::PATIENCE).await,
        "the idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn a_connection_cap_and_a_low_descriptor_limit_do_not_take_the_api_down() {
    let s = Server::start_with(Options {
        config: Some("http_header_timeout_secs = 1\nhttp_max_connections = 20\n".into()),
        ..Options::default()
    });
    // Squeeze the process: 64 descriptors, fewer than the connections thrown at it.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), "--nofile=64:64"])
        .status()
        .is_ok_and(|st| st.success());
    assert!(limited, "prlimit (util-linux) could not lower the limit");
    let held = half_requests(http_addr(&s), 100).await;
    // Beyond the cap new connections wait in the backlog; once the header timeout
    // has closed the stalled ones, they are served.
    let (status, _) = tokio::time::timeout(common::PATIENCE, s.get("/healthz"))
        .await
        .expect("/healthz answered while 100 stalled connections were open");
    assert_eq!(status, 200);
    drop(held);
    for _ in 0..20 {
        assert_eq!(s.get("/servers").await.0, 200);
    }
}

/// Established TCP sockets matching an `ss` filter, and the keepalive timers among
/// them, from one reading.
fn sockets_and_keepalive_timers(filter: &str) -> (usize, Vec<String>) {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", filter])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let timers = text
        .lines()
        .filter_map(|l| l.split("timer:(keepalive,").nth(1))
        .map(|t| t.split(',').next().unwrap_or("").to_owned())
        .collect();
    (text.lines().count(), timers)
}

#[tokio::test]
async fn relayed_sockets_have_tcp_keepalive_on_both_sides() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    for (secs, expect_on) in [(37u64, true), (0, false)] {
        let s = Server::start_with(Options {
            config: Some(format!(
                "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"default\"\ntcp_keepalive_secs = {secs}\n"
            )),
            forwards: 1,
            ..Options::default()
        });
        s.register_addr("default", &format!("127.0.0.1:{backend_port}"))
            .await;
        let forward = s.forward_addrs[0];
        let _device = tokio::net::TcpStream::connect(forward).await.unwrap();
        let (_upstream, _) = tokio::time::timeout(common::PATIENCE, backend.accept())
            .await
            .unwrap()
            .unwrap();
        // The server's two sockets: the device's (source port = the listener) and
        // the backend's (destination port = the backend).
        let filter = format!(
            "( sport = :{} or ( dport = :{backend_port} and sport != :{} ) )",
            forward.port(),
            forward.port()
        );
        // Both sockets exist as soon as the relay starts; keepalive is set on each
        // right after it is connected, so wait for the state to settle either way.
        let timers = eventually("both relayed sockets listed", || async {
            let (listed, timers) = sockets_and_keepalive_timers(&filter);
            let settled = listed >= 2 && (!expect_on || timers.len() >= 2);
            settled.then_some(timers)
        })
        .await;
        if expect_on {
            assert_eq!(timers.len(), 2, "keepalive on both sockets: {timers:?}");
            for t in &timers {
                let secs: f64 = t
                    .trim_end_matches("sec")
                    .trim_end_matches("ms")
                    .parse()
                    .unwrap_or(99.0);
                assert!(secs <= 37.0, "idle time {t} is the configured 37 s or less");
            }
        } else {
            assert!(
                timers.is_empty(),
                "tcp_keepalive_secs = 0 turns it off: {timers:?}"
            );
        }
    }
}

#[tokio::test]
async fn past_a_rate_limit_the_answer_is_429_with_retry_after_and_changes_nothing() {
    let s = Server::start_with(Options {
        config: Some("[limits]\nregister_per_sec = 2\nread_per_sec = 5\n".into()),
        ..Options::default()
    });
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let resp = s.client.get(s.url("/servers")).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(common::code(&body), "rate_limited");
        }
    }
    // A burst of one second's worth, then refused (the test is far faster than 1/5 s
    // per request, so at most one token comes back meanwhile).
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs));

    let mut created = 0;
    let mut refused = 0;
    for port in 0..6u16 {
        let resp = s
            .client
            .post(s.url("/v1/services/limited/instances"))
            .json(&json!({"address": format!("127.0.0.1:{}", 7100 + port)}))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => created += 1,
            429 => refused += 1,
            other => panic!("register answered {other}"),
        }
    }
    assert!(refused >= 3, "{created} created, {refused} refused");
    let (_, listing) = s.get("/v1/services/limited/instances").await;
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        created,
        "a refused registration stored nothing"
    );
    // Heartbeats and admin reads are not limited.
    for _ in 0..10 {
        assert_eq!(s.get("/v1/services").await.0, 200);
    }
}
