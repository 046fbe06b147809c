//! Unix-socket static backends (SPEC section 4, `[[static]] address = "unix:/path"`):
//! forwarded to from a TCP listener over a Unix stream socket, health-checked by
//! connecting to the socket, never handed out by `/servers`. The server runs
//! in-process; backends are real Unix sockets in a temporary directory; health checks
//! are waited for by moving the tokio clock they run on.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Options, PATIENCE, Server, addresses, as_time_passes, code, echo_through, jump};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// Steps of the tokio clock while waiting for health checks: checks run every second,
/// and a quarter of it keeps a check's 1 s timeout from being jumped over.
const CHECK_STEP: Duration = Duration::from_millis(250);

/// An echo backend on a Unix socket that counts the connections that brought bytes
/// (health checks connect and close without one).
struct UnixEcho {
    relayed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl UnixEcho {
    fn start(path: &Path) -> UnixEcho {
        let listener = UnixListener::bind(path).expect("bind the Unix echo socket");
        let relayed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&relayed);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if matches!(sock.read(&mut first).await, Ok(1)) {
                        // Counted before the first byte goes back, so a device that
                        // read its echo sees the count.
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (mut r, mut w) = sock.split();
                        if w.write_all(&first).await.is_ok() {
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        UnixEcho { relayed, task }
    }

    fn relayed(&self) -> usize {
        self.relayed.load(Ordering::SeqCst)
    }
}

impl Drop for UnixEcho {
    fn drop(&mut self) {
        // The listener goes with the task; its socket file stays (connects are refused).
        self.task.abort();
    }
}

/// A temporary directory and the path of a socket in it (not created).
fn socket_in_tempdir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    (dir, path)
}

/// One TCP forward listener for `default`, one `unix:` static instance, and `extra`.
fn unix_static(path: &Path, extra: &str) -> Options {
    Options {
        config: Some(format!(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
             [[static]]\nservice = \"default\"\naddress = \"unix:{}\"\n",
            path.display()
        )),
        forwards: 1,
        ..Options::default()
    }
}

/// The admin listing's state of the instance at `address`.
async fn state_of(s: &Server, address: &str) -> Option<String> {
    let (_, body) = s.get("/v1/services/default/instances").await;
    body["instances"]
        .as_array()?
        .iter()
        .find(|i| i["address"] == address)?["state"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_state(s: &Server, address: &str, want: &str) {
    as_time_passes(&format!("{address} to be {want}"), CHECK_STEP, || async {
        (state_of(s, address).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// Reads until EOF, within [`PATIENCE`].
async fn read_until_closed(sock: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, sock.read_to_end(&mut got))
        .await
        .expect("the connection was not closed in time")
        .expect("read failed");
    got
}

fn random_bytes(size: usize) -> Vec<u8> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    (0..size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test]
async fn a_large_payload_through_a_unix_backend_comes_back_byte_exact_after_half_close() {
    let (_dir, path) = socket_in_tempdir("echo.sock");
    let echo = UnixEcho::start(&path);
    let address = format!("unix:{}", path.display());
    let s = Server::start_with(unix_static(&path, "")).await;
    wait_state(&s, &address, "up").await;
    // 4 MiB, in two steps: the first MiB and a byte, echoed in full, leave the relay
    // nothing stashed, so from there on both directions splice (into and out of the
    // Unix socket).
    let payload = random_bytes(4 << 20);
    let first = (1 << 20) + 1;
    let mut device = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    let (mut r, mut w) = device.split();
    let mut back = vec![0; first];
    let (sent, read) = tokio::join!(w.write_all(&payload[..first]), r.read_exact(&mut back));
    sent.unwrap();
    read.unwrap();
    let send = async {
        w.write_all(&payload[first..]).await.unwrap();
        // The device is done sending; the echo still answers everything, then its own
        // FIN ends the device's read.
        w.shutdown().await.unwrap();
    };
    let (_, rest) = tokio::join!(send, read_until_closed(&mut r));
    back.extend_from_slice(&rest);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echo differs from what was sent");
    assert_eq!(echo.relayed(), 1);
    // Short exchanges too, on new connections.
    assert_eq!(echo_through(s.forward_addrs[0], b"small").await, b"small");
    assert_eq!(echo.relayed(), 2);
}

#[tokio::test]
async fn a_unix_backend_fin_reaches_the_device_which_can_still_send() {
    let (_dir, path) = socket_in_tempdir("b.sock");
    let backend = UnixListener::bind(&path).unwrap();
    let address = format!("unix:{}", path.display());
    let s = Server::start_with(unix_static(&path, "")).await;
    wait_state(&s, &address, "up").await;
    let mut device = TcpStream::connect(s.forward_addrs[0]).await.unwrap();
    device.write_all(b"hello").await.unwrap();
    // Health checks connect and close without a byte; the relayed link brings hello.
    let mut upstream = tokio::time::timeout(PATIENCE, async {
        loop {
            let (mut sock, _) = backend.accept().await.unwrap();
            let mut five = [0u8; 5];
            if sock.read_exact(&mut five).await.is_ok() {
                assert_eq!(&five, b"hello");
                return sock;
            }
        }
    })
    .await
    .expect("the device was not relayed to the Unix backend");
    upstream.write_all(b"bye").await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut device).await, b"bye");
    device.write_all(b"but wait").await.unwrap();
    device.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut upstream).await, b"but wait");
}

/// What a Unix backend behind a `proxy_protocol` listener receives from one device
/// that sends `payload` and closes; with the device's and the listener's addresses.
async fn proxy_header_over_unix(version: &str) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let (_dir, path) = socket_in_tempdir("proxied.sock");
    let backend = UnixListener::bind(&path).unwrap();
    let address = format!("unix:{}", path.display());
    // Health-check connections carry nothing; the relayed one starts with the header.
    let relayed = tokio::spawn(async move {
        loop {
            let (mut sock, _) = backend.accept().await.unwrap();
            let seen = read_until_closed(&mut sock).await;
            if !seen.is_empty() {
                return seen;
            }
        }
    });
    let s = Server::start_with(unix_static(
        &path,
        &format!("proxy_protocol = \"{version}\""),
    ))
    .await;
    wait_state(&s, &address, "up").await;
    let fwd = s.forward_addrs[0];
    let mut device = TcpStream::connect(fwd).await.unwrap();
    let device_addr = device.local_addr().unwrap();
    device.write_all(b"payload").await.unwrap();
    device.shutdown().await.unwrap();
    let seen = tokio::time::timeout(PATIENCE, relayed)
        .await
        .expect("nothing relayed to the Unix backend")
        .unwrap();
    (seen, device_addr, fwd)
}

#[tokio::test]
async fn proxy_protocol_v1_over_unix_carries_the_device_tcp_addresses() {
    let (seen, device, fwd) = proxy_header_over_unix("v1").await;
    let expected = common::proxy_header::v1(device, fwd, "payload");
    assert_eq!(String::from_utf8_lossy(&seen), expected);
}

#[tokio::test]
async fn proxy_protocol_v2_over_unix_carries_the_device_tcp_addresses() {
    let (seen, device, fwd) = proxy_header_over_unix("v2").await;
    assert_eq!(seen, common::proxy_header::v2(device, fwd, b"payload"));
}

#[tokio::test]
async fn a_missing_or_refusing_socket_is_down_and_comes_back_when_it_listens() {
    let (_dir, path) = socket_in_tempdir("late.sock");
    let address = format!("unix:{}", path.display());
    let s = Server::start_with(unix_static(&path, "")).await;
    let fwd = s.forward_addrs[0];
    // No socket file: several checks fail, the instance stays out, a device is closed.
    for _ in 0..12 {
        jump(CHECK_STEP).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(state_of(&s, &address).await.as_deref(), Some("expired"));
    let mut device = TcpStream::connect(fwd).await.unwrap();
    assert_eq!(read_until_closed(&mut device).await, b"");
    // The socket appears: up, and devices reach it.
    let echo = UnixEcho::start(&path);
    wait_state(&s, &address, "up").await;
    assert_eq!(echo_through(fwd, b"now").await, b"now");
    // It stops listening (the file stays, connects are refused): down again.
    drop(echo);
    wait_state(&s, &address, "expired").await;
    // A new server on the same path: back.
    std::fs::remove_file(&path).unwrap();
    let _echo = UnixEcho::start(&path);
    wait_state(&s, &address, "up").await;
    assert_eq!(echo_through(fwd, b"again").await, b"again");
}

#[tokio::test]
async fn servers_never_hands_out_a_unix_instance_the_admin_listing_shows() {
    let (_dir, path) = socket_in_tempdir("local.sock");
    let echo = UnixEcho::start(&path);
    let address = format!("unix:{}", path.display());
    let s = Server::start_with(unix_static(&path, "")).await;
    let tcp = common::Echo::start().await;
    let registered = s.register_addr("default", &tcp.addr.to_string()).await;
    // Busier than the idle unix instance: the forwarder prefers the latter.
    s.heartbeat(&registered, 1000).await;
    wait_state(&s, &address, "up").await;
    let tcp_only = vec![tcp.addr.to_string()];
    for query in [
        "?service=default&limit=100",
        "?limit=1",
        "?key=device-7&limit=5",
    ] {
        assert_eq!(s.servers(query).await, tcp_only, "{query}");
    }
    let text = s
        .client
        .get(s.url("/servers?service=default&limit=100"))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), tcp_only);
    // The forwarder does hand it out.
    assert_eq!(echo_through(s.forward_addrs[0], b"local").await, b"local");
    assert_eq!((echo.relayed(), tcp.accepted()), (1, 0));
    // The admin listing (and so the dashboard) shows it with its unix: address.
    let (_, listing) = s.get("/v1/services/default/instances").await;
    let unix = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == address.as_str())
        .unwrap_or_else(|| panic!("no {address} in {listing}"));
    assert_eq!(unix["origin"], "static");
    assert_eq!(unix["state"], "up");
    let (_, services) = s.get("/v1/services").await;
    assert_eq!(services["services"][0]["live"], 2, "{services}");
    // Nothing outside the config file registers a socket path.
    let resp = s
        .client
        .post(s.url("/v1/services/default/instances"))
        .json(&json!({ "address": address }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(code(&resp.json().await.unwrap()), "invalid_address");
    assert_eq!(
        addresses(&s.get("/servers?limit=100").await.1),
        tcp_only,
        "the refused registration changed nothing"
    );
}

/// `switchboard check` on a config file: exit code and stderr.
fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(common::process::binary())
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("SWITCHBOARD_REGISTER_TOKEN")
        .output()
        .expect("run switchboard check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_takes_absolute_socket_paths_and_names_the_key_of_a_relative_one() {
    // The socket need not exist yet: it is health-checked once the server runs.
    let (code, stderr) = check(
        "[[static]]\nservice = \"default\"\naddress = \"unix:/run/switchboard-test/none.sock\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    for bad in ["unix:relative.sock", "unix:", "unix:./b.sock"] {
        let (code, stderr) = check(&format!(
            "[[static]]\naddress = \"10.0.0.9:6666\"\n\n[[static]]\naddress = \"{bad}\"\n"
        ));
        assert_eq!(code, 2, "{bad:?} accepted");
        assert!(
            stderr.contains("static[1].address") && stderr.contains("absolute"),
            "{bad:?}: {stderr}"
        );
    }
}
