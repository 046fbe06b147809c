//! UDP forward listeners (SPEC 4, nginx's `listen ... udp`): the server in-process,
//! real UDP sockets on loopback, backends that register through the API. Sessions per
//! client address, spread by the ranking; replies to the right client; idle expiry on
//! the tokio clock; `udp_responses`; a bounded session table; a real `dig` query.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Options, PATIENCE, Server, as_time_passes, eventually};
use switchboard::cli::ServeArgs;
use switchboard::config::Config;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A UDP backend that answers each datagram `replies` times with its tag and the
/// datagram (`A:hello`).
struct UdpEcho {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    async fn start(tag: &'static str, replies: usize) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut reply = format!("{tag}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                for _ in 0..replies {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        UdpEcho {
            addr,
            received,
            task,
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn udp_listener(extra: &str) -> Options {
    Options {
        config: Some(format!(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"udp\"\nprotocol = \"udp\"\n{extra}"
        )),
        forwards: 1,
        ..Options::default()
    }
}

/// Sends `payload` from `client` and waits for one reply.
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    client.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (n, from) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(from, to, "replies come from the listener's address");
    buf.truncate(n);
    buf
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn tag(reply: &[u8]) -> String {
    String::from_utf8_lossy(&reply[..reply.iter().position(|&b| b == b':').unwrap()]).into()
}

/// Active sessions of the only forward listener, from `GET /v1/forwarders`.
async fn active_sessions(s: &Server) -> u64 {
    let (status, body) = s.get("/v1/forwarders").await;
    assert_eq!(status, 200, "{body}");
    body["forwarders"][0]["active"].as_u64().unwrap()
}

#[tokio::test]
async fn two_clients_are_spread_over_two_backends_and_each_gets_its_own_replies() {
    let s = Server::start_with(udp_listener("")).await;
    let (a, b) = (UdpEcho::start("A", 1).await, UdpEcho::start("B", 1).await);
    s.register_addr("udp", &a.addr.to_string()).await;
    s.register_addr("udp", &b.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let (one, two) = (client().await, client().await);
    let first = ask(&one, fwd, b"from one").await;
    let second = ask(&two, fwd, b"from two").await;
    assert!(first.ends_with(b":from one"), "{first:?}");
    assert!(second.ends_with(b":from two"), "{second:?}");
    assert_ne!(
        tag(&first),
        tag(&second),
        "the second session went to the other backend"
    );
    // A session sticks to its backend.
    for i in 0..5 {
        let again = ask(&one, fwd, format!("again {i}").as_bytes()).await;
        assert_eq!(tag(&again), tag(&first));
    }
    assert_eq!(active_sessions(&s).await, 2);
    assert_eq!(
        a.received.load(Ordering::Relaxed) + b.received.load(Ordering::Relaxed),
        7
    );
}

#[tokio::test]
async fn an_idle_session_expires_and_the_next_datagram_opens_a_new_one() {
    let s = Server::start_with(udp_listener("idle_timeout_secs = 2")).await;
    let a = UdpEcho::start("A", 1).await;
    s.register_addr("udp", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let one = client().await;
    assert_eq!(ask(&one, fwd, b"x").await, b"A:x");
    assert_eq!(active_sessions(&s).await, 1);
    as_time_passes(
        "the idle session to end",
        Duration::from_millis(250),
        || async { (active_sessions(&s).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(ask(&one, fwd, b"y").await, b"A:y");
    assert_eq!(active_sessions(&s).await, 1);
}

#[tokio::test]
async fn udp_responses_ends_a_session_after_that_many_replies() {
    let s = Server::start_with(udp_listener("udp_responses = 1")).await;
    // Each backend answers twice: only the first reply is relayed.
    let (a, b) = (UdpEcho::start("A", 2).await, UdpEcho::start("B", 2).await);
    s.register_addr("udp", &a.addr.to_string()).await;
    s.register_addr("udp", &b.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let one = client().await;
    let mut tags = Vec::new();
    for i in 0..4 {
        let reply = ask(&one, fwd, format!("q{i}").as_bytes()).await;
        assert!(reply.ends_with(format!(":q{i}").as_bytes()), "{reply:?}");
        tags.push(tag(&reply));
        // The session ended with its one reply; the next datagram starts another,
        // which the ranking gives to the other backend.
        eventually("the session to end", || async {
            (active_sessions(&s).await == 0).then_some(())
        })
        .await;
    }
    assert_eq!(tags.iter().filter(|t| *t == "A").count(), 2, "{tags:?}");
    assert_eq!(tags.iter().filter(|t| *t == "B").count(), 2, "{tags:?}");
    // The second reply of every query was dropped, not delivered late.
    let mut buf = [0u8; 64];
    let late = tokio::time::timeout(Duration::from_millis(200), one.recv_from(&mut buf)).await;
    assert!(
        late.is_err(),
        "a reply beyond udp_responses reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_sessions_lose_no_reply() {
    // With udp_responses = 1 a client's next datagram may arrive while the session
    // that just answered is ending: it must open a new session, not vanish into the
    // old one's socket. The forwarder bench (separate processes) lost ~0.5 % of
    // replies that way before the fix; in-process this race shows too rarely to be
    // caught here, so this guards the closed loop as a whole, not that race alone.
    let s = Server::start_with(udp_listener("udp_responses = 1")).await;
    let a = UdpEcho::start("A", 1).await;
    s.register_addr("udp", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let mut clients = Vec::new();
    for _ in 0..32 {
        let one = client().await;
        clients.push(tokio::spawn(async move {
            let mut lost = 0;
            let mut buf = vec![0u8; 1024];
            for i in 0..300u32 {
                let payload = i.to_be_bytes();
                one.send_to(&payload, fwd).await.unwrap();
                let reply = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        let (n, _) = one.recv_from(&mut buf).await.unwrap();
                        if buf[2..n] == payload {
                            return;
                        }
                    }
                })
                .await;
                lost += usize::from(reply.is_err());
            }
            lost
        }));
    }
    let mut lost = 0;
    for c in clients {
        lost += c.await.unwrap();
    }
    assert_eq!(lost, 0, "replies lost of 9600");
}

/// 100 clients, each from its own address, each answered, with never more than
/// `cap` sessions active; the clients, for more.
async fn flood_within(s: &Server, cap: u64) -> Vec<UdpSocket> {
    let fwd = s.forward_addrs[0];
    let mut clients = Vec::new();
    for i in 0..100 {
        let c = client().await;
        assert_eq!(
            ask(&c, fwd, format!("{i}").as_bytes()).await,
            format!("A:{i}").as_bytes()
        );
        assert!(active_sessions(s).await <= cap);
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn a_flood_of_source_addresses_stays_within_the_session_cap() {
    let s = Server::start_with(udp_listener("max_connections = 20")).await;
    let a = UdpEcho::start("A", 1).await;
    s.register_addr("udp", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let clients = flood_within(&s, 20).await;
    let metrics = s.metrics_text().await;
    // Tests of this file share the process's metrics: pick this listener's line.
    let ours = format!("switchboard_forward_udp_sessions_evicted_total{{listener=\"{fwd}\"}}");
    let evicted = metrics
        .lines()
        .find(|l| l.starts_with(&ours))
        .unwrap_or_else(|| panic!("no {ours} in:\n{metrics}"));
    assert!(evicted.ends_with(" 80"), "{evicted}");
    // An evicted client is served again, in a new session.
    assert_eq!(ask(&clients[0], fwd, b"back").await, b"A:back");
    assert!(active_sessions(&s).await <= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_socket_per_worker_the_sockets_share_the_session_cap() {
    // Two worker threads: two SO_REUSEPORT sockets, each with its own table, which
    // together must still hold no more than max_connections.
    let s = Server::start_with(udp_listener("max_connections = 20")).await;
    let a = UdpEcho::start("A", 1).await;
    s.register_addr("udp", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let clients = flood_within(&s, 20).await;
    assert_eq!(ask(&clients[0], fwd, b"back").await, b"A:back");
    assert!(active_sessions(&s).await <= 20);
}

#[tokio::test]
async fn a_static_udp_backend_with_no_tcp_port_is_served() {
    // Static instances are checked by TCP connect, which a UDP-only backend would
    // fail for good; a service only UDP listeners forward to is checked passively.
    let a = UdpEcho::start("A", 1).await;
    let s = Server::start_with(udp_listener(&format!(
        "[[static]]\nservice = \"udp\"\naddress = \"{}\"\n",
        a.addr
    )))
    .await;
    let fwd = s.forward_addrs[0];
    let one = client().await;
    let reply = eventually("the static UDP backend to answer", || async {
        one.send_to(b"ping", fwd).await.unwrap();
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), one.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    })
    .await;
    assert_eq!(reply, b"A:ping");
}

/// A DNS server that answers every `A` question with 10.1.2.3.
async fn tiny_dns() -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let q = &buf[..n];
            // Header (12 bytes), then the question: labels, a 0, type and class.
            let mut end = 12;
            while end < n && q[end] != 0 {
                end += 1 + usize::from(q[end]);
            }
            let end = end + 5;
            if end > n {
                continue;
            }
            let mut reply = Vec::with_capacity(end + 16);
            reply.extend_from_slice(&q[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            reply.extend_from_slice(&q[12..end]);
            // The name by pointer to the question, A, IN, TTL 60, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_resolves_through_a_udp_listener() {
    let s = Server::start_with(udp_listener("udp_responses = 1")).await;
    let (dns, task) = tiny_dns().await;
    s.register_addr("udp", &dns.to_string()).await;
    let fwd = s.forward_addrs[0];
    let out = tokio::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &fwd.port().to_string(),
            "device.example",
            "A",
            "+short",
            "+tries=1",
            "+time=5",
        ])
        .output()
        .await
        .expect("dig runs (apt: dnsutils; .ci/run installs it)");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.1.2.3");
    task.abort();
}

fn config_error(toml: &str) -> String {
    Config::from_toml(toml, &ServeArgs::default())
        .expect_err("refused")
        .to_string()
}

#[test]
fn bad_udp_settings_are_refused_with_the_key_named() {
    let base = "[[forward]]\nlisten = \"127.0.0.1:0\"\n";
    let cases = [
        ("protocol = \"sctp\"", "forward[0].protocol"),
        (
            "protocol = \"udp\"\nproxy_protocol = \"v2\"",
            "forward[0].proxy_protocol",
        ),
        (
            "protocol = \"udp\"\ntcp_keepalive_secs = 5",
            "forward[0].tcp_keepalive_secs",
        ),
        ("udp_responses = 1", "forward[0].udp_responses"),
        ("protocol = \"udp\"\nudp_responses = -1", "udp_responses"),
    ];
    for (extra, key) in cases {
        let err = config_error(&format!("{base}{extra}"));
        assert!(err.contains(key), "{extra:?}: {err}");
    }
    let ok = Config::from_toml(
        &format!("{base}protocol = \"udp\"\nudp_responses = 1"),
        &ServeArgs::default(),
    )
    .expect("valid");
    assert_eq!(
        ok.forwards[0].idle_timeout,
        Some(Duration::from_secs(20)),
        "SPEC 4: UDP sessions idle out after 20 s by default"
    );
}

/// At the drain deadline the sessions still open end (each worker thread's through its
/// own child of the drain token), so shutdown does not wait out their idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_ends_sessions_still_open() {
    let mut options = udp_listener("idle_timeout_secs = 300");
    options.config = options
        .config
        .map(|listener| format!("drain_timeout_secs = 1\n{listener}"));
    let s = Server::start_with(options).await;
    let a = UdpEcho::start("A", 1).await;
    s.register_addr("udp", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    // Several client addresses, so that both worker threads' sockets most likely
    // hold sessions.
    let mut clients = Vec::new();
    for i in 0..8 {
        let c = client().await;
        let reply = ask(&c, fwd, format!("hold {i}").as_bytes()).await;
        assert!(reply.ends_with(format!("hold {i}").as_bytes()), "{reply:?}");
        clients.push(c);
    }
    assert_eq!(active_sessions(&s).await, 8);
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("shutdown ended at the 1 s drain deadline, not at the 300 s idle timeout");
}
