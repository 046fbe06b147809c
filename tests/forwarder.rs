//! Black-box tests of the fallback forwarder (SPEC section 4): the server in-process
//! (the drain on SIGTERM runs the binary), real tokio echo backends, real sockets on
//! loopback. `fail_timeout` and the idle timeout are waited for by moving the tokio
//! clock the forwarder's timers run on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Echo, Options, PATIENCE, Server, as_time_passes, echo_through, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn forwarding(config: &str) -> Options {
    Options {
        config: Some(config.to_owned()),
        forwards: 1,
        ..Options::default()
    }
}

fn default_forward() -> Options {
    Options {
        forward: vec!["127.0.0.1:0=default".into()],
        forwards: 1,
        ..Options::default()
    }
}

/// A port that was free a moment ago and has nothing listening now.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Reads until EOF or error; returns what was read and whether the close was clean.
async fn read_until_closed(sock: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, sock.read_to_end(&mut got))
        .await
        .expect("the connection was not closed in time");
    got
}

#[tokio::test]
async fn four_devices_in_a_row_land_two_on_each_backend() {
    let s = Server::start_with(default_forward()).await;
    let a = Echo::start().await;
    let b = Echo::start().await;
    s.register_addr("default", &a.addr.to_string()).await;
    s.register_addr("default", &b.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    for i in 0..4u8 {
        assert_eq!(echo_through(fwd, &[i; 16]).await, vec![i; 16]);
    }
    assert_eq!((a.accepted(), b.accepted()), (2, 2));
}

#[tokio::test]
async fn random_payloads_come_back_byte_exact() {
    let s = Server::start_with(default_forward()).await;
    let a = Echo::start().await;
    s.register_addr("default", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for size in [1usize, 1000, 65_537, 1 << 20, 3 * (1 << 20) + 17] {
        let payload: Vec<u8> = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert!(
            echo_through(fwd, &payload).await == payload,
            "{size} bytes differ"
        );
    }
}

#[tokio::test]
async fn a_device_fin_reaches_the_backend_which_can_still_answer() {
    let s = Server::start_with(default_forward()).await;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.register_addr("default", &backend.local_addr().unwrap().to_string())
        .await;
    let mut device = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    let (mut upstream, _) = tokio::time::timeout(PATIENCE, backend.accept())
        .await
        .unwrap()
        .unwrap();
    device.write_all(b"last words").await.unwrap();
    device.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut upstream).await, b"last words");
    upstream.write_all(b"reply after FIN").await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut device).await, b"reply after FIN");
}

#[tokio::test]
async fn a_backend_fin_reaches_the_device_which_can_still_send() {
    let s = Server::start_with(default_forward()).await;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.register_addr("default", &backend.local_addr().unwrap().to_string())
        .await;
    let mut device = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    let (mut upstream, _) = tokio::time::timeout(PATIENCE, backend.accept())
        .await
        .unwrap()
        .unwrap();
    upstream.write_all(b"bye").await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut device).await, b"bye");
    device.write_all(b"but wait").await.unwrap();
    device.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut upstream).await, b"but wait");
}

#[tokio::test]
async fn a_refused_backend_is_skipped_and_the_next_tried() {
    let s = Server::start_with(default_forward()).await;
    let good = Echo::start().await;
    let dead = closed_port().await;
    s.register_addr("default", &dead.to_string()).await;
    let live = s.register_addr("default", &good.addr.to_string()).await;
    // The live backend looks busier, so the dead one is always tried first.
    s.heartbeat(&live, 1000).await;
    for i in 0..5u8 {
        assert_eq!(echo_through(s.forward_addrs[0], &[i; 8]).await, vec![i; 8]);
    }
    assert_eq!(good.accepted(), 5);
}

#[tokio::test]
async fn max_fails_takes_a_backend_out_for_fail_timeout() {
    let s = Server::start_with(forwarding(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"default\"\nmax_fails = 1\nfail_timeout_secs = 3\n",
    )).await;
    let good = Echo::start().await;
    let flaky_addr = closed_port().await;
    s.register_addr("default", &flaky_addr.to_string()).await;
    let live = s.register_addr("default", &good.addr.to_string()).await;
    s.heartbeat(&live, 1000).await;
    let fwd = s.forward_addrs[0];
    // One refusal is max_fails: the flaky backend is out for 3 s (of the forwarder's
    // clock, which the test moves on).
    echo_through(fwd, b"first").await;
    let marked_out = tokio::time::Instant::now();
    let flaky = Echo::start_on(&flaky_addr.to_string()).await;
    for _ in 0..5 {
        echo_through(fwd, b"while out").await;
    }
    if marked_out.elapsed() < Duration::from_secs(3) {
        assert_eq!(flaky.accepted(), 0, "a backend in fail_timeout was chosen");
    }
    // After fail_timeout it is chosen again (it is the least loaded).
    as_time_passes(
        "the backend to come back after fail_timeout",
        Duration::from_millis(250),
        || async {
            echo_through(fwd, b"again").await;
            (flaky.accepted() > 0).then_some(())
        },
    )
    .await;
    assert!(marked_out.elapsed() >= Duration::from_secs(3));
}

async fn proxy_header_seen(version: &str) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let s = Server::start_with(forwarding(&format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = \"{version}\"\n"
    )))
    .await;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.register_addr("default", &backend.local_addr().unwrap().to_string())
        .await;
    let fwd = s.forward_addrs[0];
    let mut device = TcpStream::connect(fwd).await.unwrap();
    let device_addr = device.local_addr().unwrap();
    let (mut upstream, _) = tokio::time::timeout(PATIENCE, backend.accept())
        .await
        .unwrap()
        .unwrap();
    device.write_all(b"payload").await.unwrap();
    device.shutdown().await.unwrap();
    let seen = read_until_closed(&mut upstream).await;
    drop(s);
    (seen, device_addr, fwd)
}

#[tokio::test]
async fn proxy_protocol_v1_header_bytes() {
    let (seen, device, fwd) = proxy_header_seen("v1").await;
    let expected = common::proxy_header::v1(device, fwd, "payload");
    assert_eq!(String::from_utf8_lossy(&seen), expected);
}

#[tokio::test]
async fn proxy_protocol_v2_header_bytes() {
    let (seen, device, fwd) = proxy_header_seen("v2").await;
    assert_eq!(seen, common::proxy_header::v2(device, fwd, b"payload"));
}

/// Connects to `fwd` from source address `source` and echoes a byte; returns which
/// backend answered (by accepted-count change).
async fn connect_from(source: &str, fwd: SocketAddr, backends: &[Echo]) -> usize {
    let before: Vec<usize> = backends.iter().map(Echo::accepted).collect();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut sock = socket.connect(fwd).await.unwrap();
    sock.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(PATIENCE, sock.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    let after: Vec<usize> = backends.iter().map(Echo::accepted).collect();
    (0..backends.len())
        .find(|&i| after[i] > before[i])
        .expect("some backend accepted")
}

#[tokio::test]
async fn hash_remote_addr_keeps_a_reconnecting_device_on_its_backend() {
    let s = Server::start_with(forwarding(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nhash = \"remote_addr\"\n",
    ))
    .await;
    let backends = [
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    ];
    for b in &backends {
        let r = s.register_addr("default", &b.addr.to_string()).await;
        s.heartbeat(&r, 1000).await;
    }
    let fwd = s.forward_addrs[0];
    let mut homes = Vec::new();
    for device in 2..10 {
        let source = format!("127.0.0.{device}");
        let home = connect_from(&source, fwd, &backends).await;
        for _ in 0..4 {
            assert_eq!(
                connect_from(&source, fwd, &backends).await,
                home,
                "{source} moved"
            );
        }
        homes.push(home);
    }
    homes.sort_unstable();
    homes.dedup();
    assert!(homes.len() >= 2, "8 devices all on one backend: {homes:?}");
}

#[tokio::test]
async fn max_connections_closes_connections_beyond_it() {
    let s = Server::start_with(forwarding(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n",
    ))
    .await;
    let a = Echo::start().await;
    s.register_addr("default", &a.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut sock = TcpStream::connect(fwd).await.unwrap();
        sock.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        sock.read_exact(&mut two).await.unwrap();
        held.push(sock);
    }
    let mut third = TcpStream::connect(fwd).await.unwrap();
    let _ = third.write_all(b"hi").await;
    let mut buf = [0u8; 2];
    let closed = tokio::time::timeout(PATIENCE, third.read(&mut buf))
        .await
        .expect("the third connection was neither closed nor served");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "third connection was served"
    );
    drop(held.pop());
    eventually("a slot to free up", || async {
        let mut sock = TcpStream::connect(fwd).await.ok()?;
        sock.write_all(b"ok").await.ok()?;
        let mut two = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(1), sock.read_exact(&mut two))
            .await
            .ok()?
            .ok()?;
        Some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_link_is_closed_after_idle_timeout() {
    let s = Server::start_with(forwarding(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nidle_timeout_secs = 1\n",
    ))
    .await;
    let a = Echo::start().await;
    s.register_addr("default", &a.addr.to_string()).await;
    let mut sock = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    sock.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    sock.read_exact(&mut four).await.unwrap();
    // The relay's idle timer runs on the tokio clock: move it on until the link closes.
    let started = tokio::time::Instant::now();
    let closed = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest).await;
    });
    as_time_passes(
        "the idle link to close",
        Duration::from_millis(100),
        || async { closed.is_finished().then_some(()) },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_static_instance_is_health_checked_down_and_up() {
    // Checks run every second of the tokio clock; a quarter of it per step keeps a
    // check's 1 s connect timeout from being jumped over.
    const CHECK_STEP: Duration = Duration::from_millis(250);
    let backend = Echo::start().await;
    let addr = backend.addr;
    let s = Server::start_with(forwarding(&format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\n\n[[static]]\nservice = \"default\"\naddress = \"{addr}\"\n"
    ))).await;
    let fwd = s.forward_addrs[0];
    let state = || async {
        let (_, body) = s.get("/v1/services/default/instances").await;
        body["instances"][0]["state"].as_str().map(str::to_owned)
    };
    as_time_passes("the static instance to be up", CHECK_STEP, || async {
        (state().await.as_deref() == Some("up")).then_some(())
    })
    .await;
    assert_eq!(echo_through(fwd, b"static").await, b"static");
    let (_, listing) = s.get("/v1/services/default/instances").await;
    assert_eq!(listing["instances"][0]["address"], addr.to_string());
    assert_eq!(listing["instances"][0]["origin"], "static");
    backend.stop();
    as_time_passes("the static instance to go down", CHECK_STEP, || async {
        (state().await.as_deref() == Some("expired")).then_some(())
    })
    .await;
    let _again = Echo::start_on(&addr.to_string()).await;
    as_time_passes("the static instance to come back", CHECK_STEP, || async {
        (state().await.as_deref() == Some("up")).then_some(())
    })
    .await;
    assert_eq!(echo_through(fwd, b"back").await, b"back");
}

#[tokio::test]
async fn ipv6_listeners_and_backends_work() {
    let s = Server::start_with(Options {
        forward: vec!["[::1]:0=v6".into()],
        forwards: 1,
        ..Options::default()
    })
    .await;
    let a = Echo::start_on("[::1]:0").await;
    s.register("v6", json!({"address": a.addr.to_string()}))
        .await;
    assert!(s.forward_addrs[0].is_ipv6());
    assert_eq!(
        echo_through(s.forward_addrs[0], b"over v6").await,
        b"over v6"
    );
}

#[tokio::test]
async fn no_backend_closes_the_device() {
    let s = Server::start_with(default_forward()).await;
    let mut sock = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    assert_eq!(read_until_closed(&mut sock).await, b"");
}

#[tokio::test]
async fn sigterm_lets_a_relayed_connection_finish() {
    // A process: SIGTERM and the exit code are what is tested.
    let mut s = common::process::Server::start_with(default_forward());
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.register_addr("default", &backend.local_addr().unwrap().to_string())
        .await;
    let mut device = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    let (mut upstream, _) = tokio::time::timeout(PATIENCE, backend.accept())
        .await
        .unwrap()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    s.wait_log("forward listener closed");
    // The relayed link still works after the listener closed...
    device.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(PATIENCE, upstream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
    // ...and new devices are refused.
    assert!(TcpStream::connect(s.forward_addrs[0]).await.is_err());
    drop(device);
    drop(upstream);
    assert_eq!(s.terminate_wait(), 0);
}

/// At the drain deadline the relays still open are cut (each worker thread's through
/// its own child of the drain token), so shutdown does not wait for devices that never
/// hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cuts_relays_still_open() {
    let s = Server::start_with(forwarding(
        "drain_timeout_secs = 1\n[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"default\"\n",
    ))
    .await;
    let backend = Echo::start().await;
    s.register_addr("default", &backend.addr.to_string()).await;
    let fwd = s.forward_addrs[0];
    // Several, so that both worker threads' listening sockets most likely hold some.
    let mut devices = Vec::new();
    for i in 0..8u8 {
        let mut device = TcpStream::connect(fwd).await.unwrap();
        device.write_all(&[i; 4]).await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(PATIENCE, device.read_exact(&mut back))
            .await
            .expect("echoed in time")
            .unwrap();
        assert_eq!(back, [i; 4]);
        devices.push(device);
    }
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("shutdown ended at the 1 s drain deadline");
    for device in &mut devices {
        assert_eq!(read_until_closed(device).await, b"", "the relay was cut");
    }
}
