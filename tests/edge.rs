//! The forwarder at the edge (SPEC 9), black-box with peers no one here wrote:
//! Mosquitto brokers and `mosquitto_pub` through a TLS-terminating listener with
//! `hash = "mqtt_client_id"`, device certificates, PROXY v2's TLS TLVs read back by a
//! backend, `openssl s_client -servername` through an SNI-routing listener to two
//! `openssl s_server` backends, and floods of garbage hellos, CONNECTs and silent
//! handshakes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::certs::Pki;
use common::{Options, PATIENCE, Registered, Server, eventually, tools};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `port`.
async fn accepting(port: u16) {
    eventually(&format!("something listens on {port}"), || async move {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// A Mosquitto broker on a port of its own, logging to a file the test reads.
struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("log");
        // `user root`: run as root, mosquitto would drop to its own user, which could
        // not write the log in the test's directory (stdout would be block-buffered).
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest file {}\nlog_type all\nuser root\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        accepting(port).await;
        Broker {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Client ids that connected, in order (`New client connected from … as ID (…`).
    fn client_ids(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("New client connected from"))
            .filter_map(|l| l.split(" as ").nth(1))
            .filter_map(|rest| rest.split(" (").next())
            .map(str::to_owned)
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mosquitto_pub` through `addr` as client `id`, trusting `ca`; with `identity`
/// (certificate, key) it presents a device certificate. True when it published.
/// Awaited, not blocked on: the server runs on the test's own thread.
async fn publish(
    addr: SocketAddr,
    id: &str,
    ca: &PathBuf,
    identity: Option<(&PathBuf, &PathBuf)>,
) -> bool {
    let mut cmd = tokio::process::Command::new("mosquitto_pub");
    cmd.args(["-h", "localhost", "-p", &addr.port().to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(["-i", id, "-t", "edge/test", "-m", "hello", "-q", "1"]);
    if let Some((cert, key)) = identity {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    tokio::time::timeout(PATIENCE, status)
        .await
        .expect("mosquitto_pub ends")
        .expect("run mosquitto_pub")
        .success()
}

fn mqtt_ready(test: &str) -> bool {
    tools::tools_ready(test, &["mosquitto", "mosquitto_pub"], &[])
}

/// The broker each id's last connection reached (from the brokers' logs).
fn landed(brokers: &[Broker]) -> HashMap<String, Vec<usize>> {
    let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, b) in brokers.iter().enumerate() {
        for id in b.client_ids() {
            by_id.entry(id).or_default().push(i);
        }
    }
    by_id
}

/// Each broker reports `load[i]` connections: the devices a broker of a real fleet
/// holds besides the test's (each publish has closed by then). The hand-outs the
/// ranking counted are absorbed as a backend's heartbeats absorb them.
async fn heartbeat_all(s: &Server, registered: &[Option<Registered>], load: &[u64]) {
    for (r, load) in registered.iter().zip(load) {
        if let Some(r) = r {
            let (status, _) = s.heartbeat(r, *load).await;
            assert_eq!(status, 200);
        }
    }
}

#[tokio::test]
async fn a_client_id_returns_to_its_broker_through_tls_and_moves_when_it_dies() {
    if !mqtt_ready("mqtt affinity") {
        return;
    }
    let pki = Pki::new();
    let mut brokers = Vec::new();
    for _ in 0..3 {
        brokers.push(Broker::start().await);
    }
    let config = format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"mqtt\"\nhash = \"mqtt_client_id\"\n\
         tls_cert = {:?}\ntls_key = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let s = Server::start_with(Options {
        config: Some(config),
        forwards: 1,
        ..Options::default()
    })
    .await;
    let mut registered = Vec::new();
    for b in &brokers {
        registered.push(Some(s.register_addr("mqtt", &b.address()).await));
    }
    let fwd = s.forward_addrs[0];
    let ca = pki.path("ca.pem");
    // Three brokers a thousand devices each: one reconnect is no overload (with
    // loads near zero, the bounded load moves a key for a difference of one).
    let fleet = [1000, 1000, 1000];
    heartbeat_all(&s, &registered, &fleet).await;
    let ids: Vec<String> = (0..40).map(|i| format!("dtu-{i:03}")).collect();
    for id in &ids {
        assert!(
            publish(fwd, id, &ca, None).await,
            "{id} published through TLS"
        );
        heartbeat_all(&s, &registered, &fleet).await;
    }
    // The brokers log a connection as it is accepted; every one is in by now, as each
    // publish waited for its broker's acknowledgement.
    let first = landed(&brokers);
    assert_eq!(first.len(), ids.len(), "{first:?}");
    let used: std::collections::BTreeSet<usize> = first.values().map(|v| v[0]).collect();
    assert_eq!(
        used.len(),
        3,
        "40 ids spread over the three brokers: {first:?}"
    );

    // The same id, 20 times: the same broker each time.
    for id in &ids[..3] {
        for _ in 0..20 {
            assert!(publish(fwd, id, &ca, None).await);
            heartbeat_all(&s, &registered, &fleet).await;
        }
    }
    let again = landed(&brokers);
    for id in &ids[..3] {
        let seen = &again[id];
        assert_eq!(seen.len(), 21, "{id}: {seen:?}");
        assert!(seen.iter().all(|b| *b == seen[0]), "{id} moved: {seen:?}");
    }

    // Its broker overloaded (3,000 against 1,000): the id goes elsewhere, and comes
    // back once the load evens out.
    let home = again[&ids[0]][0];
    let mut skewed = fleet;
    skewed[home] = 3000;
    heartbeat_all(&s, &registered, &skewed).await;
    heartbeat_all(&s, &registered, &skewed).await;
    let on = |b: usize| {
        brokers[b]
            .client_ids()
            .iter()
            .filter(|i| **i == ids[0])
            .count()
    };
    let at_home = on(home);
    assert!(publish(fwd, &ids[0], &ca, None).await);
    assert_eq!(on(home), at_home, "overloaded: the id went elsewhere");
    heartbeat_all(&s, &registered, &fleet).await;
    heartbeat_all(&s, &registered, &fleet).await;
    assert!(publish(fwd, &ids[0], &ca, None).await);
    assert_eq!(on(home), at_home + 1, "even again: the id is back home");

    // The broker holding the most ids dies: its ids move, and spread over the others.
    let mut per_broker = BTreeMap::new();
    for (id, seen) in &first {
        per_broker
            .entry(seen[0])
            .or_insert_with(Vec::new)
            .push(id.clone());
    }
    let (&dead, orphans) = per_broker.iter().max_by_key(|(_, ids)| ids.len()).unwrap();
    let orphans = orphans.clone();
    brokers[dead].kill();
    let before: Vec<usize> = brokers.iter().map(|b| b.client_ids().len()).collect();
    for id in &orphans {
        assert!(
            publish(fwd, id, &ca, None).await,
            "{id} after its broker died"
        );
        heartbeat_all(&s, &registered, &fleet).await;
    }
    let mut moved_to = std::collections::BTreeSet::new();
    for (i, b) in brokers.iter().enumerate() {
        let new_ids = &b.client_ids()[before[i]..];
        if i == dead {
            assert!(new_ids.is_empty());
            continue;
        }
        if new_ids.iter().any(|id| orphans.contains(id)) {
            moved_to.insert(i);
        }
    }
    assert_eq!(
        moved_to.len(),
        2,
        "the {} ids of the dead broker spread over both others",
        orphans.len()
    );
    let metrics = s.metrics_text().await;
    let keyed = metric(&metrics, "switchboard_forward_mqtt_affinity_total", "keyed");
    assert!(keyed >= 100.0, "{keyed}");
    assert!(metric(&metrics, "switchboard_tls_handshakes_total", "ok") >= 100.0);
    s.stop().await;
}

/// The value of the series of `name` with `result="{result}"` (summed over listeners).
fn metric(text: &str, name: &str, result: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A backend that reads a PROXY v2 header and its TLVs, then echoes.
async fn tlv_backend() -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<(u8, Vec<u8>)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut fixed = [0u8; 16];
                if sock.read_exact(&mut fixed).await.is_err() {
                    return;
                }
                assert_eq!(
                    &fixed[..12],
                    switchboard::forwarder::proxy_protocol::V2_SIGNATURE
                );
                let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
                let mut rest = vec![0; len];
                sock.read_exact(&mut rest).await.unwrap();
                // IPv4: 12 bytes of addresses and ports, then the TLVs.
                let mut tlvs = Vec::new();
                let mut at = 12;
                while at + 3 <= rest.len() {
                    let n = usize::from(u16::from_be_bytes([rest[at + 1], rest[at + 2]]));
                    tlvs.push((rest[at], rest[at + 3..at + 3 + n].to_vec()));
                    at += 3 + n;
                }
                let _ = tx.send(tlvs).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Runs `openssl s_client` with `args`, `input` on its stdin; answers its output.
async fn s_client(args: &[&str], input: &str) -> String {
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("s_client ends")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn device_certificates_are_required_and_their_facts_reach_the_backend_in_proxy_v2() {
    if !mqtt_ready("device certificates") || !tools::tools_ready("tlv", &["openssl"], &[]) {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start().await;
    let (backend, mut tlvs) = tlv_backend().await;
    let config = format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"mqtt\"\n\
         tls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {ca:?}\ntls_client_auth = \"required\"\n\
         [[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"tlv\"\nproxy_protocol = \"v2\"\n\
         tls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {ca:?}\ntls_client_auth = \"optional\"\n\
         tls_alpn = [\"mqtt\", \"x-other\"]\n",
        cert = pki.path("server.pem"),
        key = pki.path("server.key"),
        ca = pki.path("client-ca.pem"),
    );
    let s = Server::start_with(Options {
        config: Some(config),
        forwards: 2,
        ..Options::default()
    })
    .await;
    s.register_addr("mqtt", &broker.address()).await;
    s.register_addr("tlv", &backend.to_string()).await;
    let (mqtt, tlv) = (s.forward_addrs[0], s.forward_addrs[1]);
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    assert!(publish(mqtt, "with-cert", &ca, Some((&cert, &key))).await);
    assert!(
        !publish(mqtt, "without-cert", &ca, None).await,
        "refused at the handshake"
    );
    let (other_cert, other_key) = (pki.path("other-client.pem"), pki.path("other-client.key"));
    assert!(!publish(mqtt, "wrong-ca", &ca, Some((&other_cert, &other_key))).await);
    assert_eq!(broker.client_ids(), ["with-cert"]);

    let connect = tlv.to_string();
    let ca_arg = ca.to_str().unwrap();
    let out = s_client(
        &[
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            ca_arg,
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-alpn",
            "mqtt",
            "-tls1_3",
        ],
        "ping\n",
    )
    .await;
    assert!(out.contains("ALPN protocol: mqtt"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let got = tokio::time::timeout(PATIENCE, tlvs.recv())
        .await
        .unwrap()
        .unwrap();
    let find = |kind: u8| got.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone());
    assert_eq!(
        find(0x02).as_deref(),
        Some(&b"localhost"[..]),
        "authority: {got:?}"
    );
    assert_eq!(find(0x01).as_deref(), Some(&b"mqtt"[..]), "ALPN: {got:?}");
    let ssl = find(0x20).expect("PP2_TYPE_SSL");
    assert_eq!(
        ssl[0], 0x07,
        "TLS, a certificate on the connection and the session"
    );
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let mut subs = HashMap::new();
    let mut at = 5;
    while at + 3 <= ssl.len() {
        let n = usize::from(u16::from_be_bytes([ssl[at + 1], ssl[at + 2]]));
        subs.insert(
            ssl[at],
            String::from_utf8_lossy(&ssl[at + 3..at + 3 + n]).into_owned(),
        );
        at += 3 + n;
    }
    assert_eq!(subs.get(&0x21).map(String::as_str), Some("TLSv1.3"));
    assert_eq!(subs.get(&0x22).map(String::as_str), Some("backend-1"));

    // Without a client certificate (optional) and over TLS 1.2: no CN, verify non-zero.
    let out = s_client(
        &[
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            ca_arg,
            "-tls1_2",
        ],
        "ping\n",
    )
    .await;
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("TLSv1.2"),
        "{out}"
    );
    let got = tokio::time::timeout(PATIENCE, tlvs.recv())
        .await
        .unwrap()
        .unwrap();
    let ssl = got.iter().find(|(k, _)| *k == 0x20).unwrap().1.clone();
    assert_eq!(ssl[0], 0x01);
    assert_ne!(&ssl[1..5], &[0, 0, 0, 0]);
    assert!(String::from_utf8_lossy(&ssl).contains("TLSv1.2"));
    assert!(!String::from_utf8_lossy(&ssl).contains("backend-1"));
    let metrics = s.metrics_text().await;
    assert!(
        metric(&metrics, "switchboard_tls_handshakes_total", "failed") >= 2.0,
        "{metrics}"
    );
    s.stop().await;
}

/// An `openssl s_server` backend serving `name.pem` from `pki`.
struct TlsBackend {
    child: Child,
    port: u16,
}

impl TlsBackend {
    async fn start(pki: &Pki, name: &str) -> TlsBackend {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(pki.path(&format!("{name}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{name}.key")))
            .args(["-quiet", "-naccept", "100"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        accepting(port).await;
        TlsBackend { child, port }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The serial of the certificate `s_client` printed, as `openssl x509 -serial` says it.
fn served_serial(out: &str) -> Option<String> {
    let start = out.find("-----BEGIN CERTIFICATE-----")?;
    let end = out.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child
        .stdin
        .take()?
        .write_all(&out.as_bytes()[start..end])
        .ok()?;
    let serial = String::from_utf8(child.wait_with_output().ok()?.stdout).ok()?;
    Some(serial.trim().trim_start_matches("serial=").to_owned())
}

#[tokio::test]
async fn sni_routes_each_name_to_its_own_tls_backend_and_refuses_a_wrong_one() {
    if !tools::tools_ready("sni routing", &["openssl"], &[]) {
        return;
    }
    let pki = Pki::new();
    pki.issue_server_for(0x21, "a", &["a.example.com"]);
    pki.issue_server_for(0x22, "b", &["*.b.example.com"]);
    let a = TlsBackend::start(&pki, "a").await;
    let b = TlsBackend::start(&pki, "b").await;
    let config = "[[forward]]\nlisten = \"127.0.0.1:0\"\n\
         sni_routes = { \"a.example.com\" = \"svc-a\", \"*.b.example.com\" = \"svc-b\" }\n"
        .to_owned();
    let s = Server::start_with(Options {
        config: Some(config),
        forwards: 1,
        ..Options::default()
    })
    .await;
    s.register_addr("svc-a", &format!("127.0.0.1:{}", a.port))
        .await;
    s.register_addr("svc-b", &format!("127.0.0.1:{}", b.port))
        .await;
    let connect = s.forward_addrs[0].to_string();
    // s_server sends the leaf alone: the client trusts the root and the intermediate.
    let ca = pki.path("client-ca.pem");
    let ca = ca.to_str().unwrap();
    for (name, serial) in [
        ("a.example.com", "21"),
        ("x.b.example.com", "22"),
        ("deep.x.b.example.com", "22"),
    ] {
        let out = s_client(
            &[
                "-connect",
                &connect,
                "-servername",
                name,
                "-CAfile",
                ca,
                "-verify_hostname",
                name,
            ],
            "",
        )
        .await;
        // The route covers any depth; the certificate's wildcard one label only.
        if name != "deep.x.b.example.com" {
            assert!(out.contains("Verify return code: 0 (ok)"), "{name}: {out}");
        }
        assert_eq!(
            served_serial(&out).as_deref(),
            Some(serial),
            "{name}: {out}"
        );
    }
    let out = s_client(
        &[
            "-connect",
            &connect,
            "-servername",
            "c.example.com",
            "-CAfile",
            ca,
        ],
        "",
    )
    .await;
    assert!(
        !out.contains("BEGIN CERTIFICATE"),
        "a wrong name is refused: {out}"
    );
    let metrics = s.metrics_text().await;
    assert_eq!(
        metric(&metrics, "switchboard_forward_sni_total", "routed"),
        3.0
    );
    assert_eq!(
        metric(&metrics, "switchboard_forward_sni_total", "refused"),
        1.0
    );
    drop((a, b));
    s.stop().await;
}

/// A valid MQTT 3.1.1 CONNECT for `id`.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Sends `bytes` (then FIN when `finish`) and waits for the server to close; true when
/// it closed without answering anything.
async fn closed_without_answer(addr: SocketAddr, bytes: &[u8], finish: bool) -> bool {
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        return false;
    };
    if !bytes.is_empty() {
        let _ = sock.write_all(bytes).await;
    }
    if finish {
        let _ = sock.shutdown().await;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(PATIENCE, sock.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn garbage_hellos_connects_and_silent_handshakes_are_closed_in_time_and_counted() {
    let pki = Pki::new();
    let echo = common::echo::Echo::start().await;
    let config = format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n\
         sni_routes = {{ \"a.example.com\" = \"echo\" }}\ntls_handshake_timeout_ms = 300\n\
         [[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\nhash = \"mqtt_client_id\"\n\
         tls_handshake_timeout_ms = 300\n\
         [[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n\
         tls_cert = {:?}\ntls_key = {:?}\ntls_handshake_timeout_ms = 300\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let s = Server::start_with(Options {
        config: Some(config),
        forwards: 3,
        ..Options::default()
    })
    .await;
    s.register_addr("echo", &echo.addr.to_string()).await;
    let (sni, mqtt, tls) = (s.forward_addrs[0], s.forward_addrs[1], s.forward_addrs[2]);

    // A valid CONNECT and what follows it reach the backend unchanged.
    let mut sent = connect_packet("device-1");
    sent.extend_from_slice(b"\xc0\x00 and the rest");
    let back = common::echo::echo_through(mqtt, &sent).await;
    assert_eq!(back, sent);

    // 1,000 bad first packets per listener, 50 at a time: garbage, and valid packets
    // cut short (then FIN).
    let hello_start = [22u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
    let mut closed = 0;
    for batch in 0..20u32 {
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let n = batch * 50 + i;
            let garbage: Vec<u8> = (0..(n % 97 + 1)).map(|k| (n * 31 + k * 7) as u8).collect();
            let truncated_connect = connect_packet("cut-short")[..(n as usize % 12) + 1].to_vec();
            let (hello, connect) = if n % 2 == 0 {
                (garbage.clone(), garbage)
            } else {
                (
                    hello_start[..(n as usize % 10) + 1].to_vec(),
                    truncated_connect,
                )
            };
            tasks.push(tokio::spawn(async move {
                closed_without_answer(sni, &hello, true).await as u32
                    + closed_without_answer(mqtt, &connect, true).await as u32
            }));
        }
        for t in tasks {
            closed += t.await.unwrap();
        }
    }
    assert_eq!(closed, 2000, "every bad first packet closed");

    // Silent connections: no hello, no CONNECT, no handshake: closed at the deadline.
    let mut silent = Vec::new();
    for addr in [sni, mqtt, tls] {
        for _ in 0..20 {
            silent.push(tokio::spawn(closed_without_answer(addr, &[], false)));
        }
    }
    for t in silent {
        assert!(
            t.await.unwrap(),
            "a silent connection closed by its deadline"
        );
    }
    let metrics = s.metrics_text().await;
    let sni_bad = metric(&metrics, "switchboard_forward_sni_total", "malformed");
    let mqtt_bad = metric(
        &metrics,
        "switchboard_forward_mqtt_affinity_total",
        "malformed",
    );
    assert_eq!(sni_bad, 1000.0, "{metrics}");
    assert_eq!(mqtt_bad, 1000.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "switchboard_forward_sni_total", "timeout"),
        20.0
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_forward_mqtt_affinity_total",
            "timeout"
        ),
        20.0
    );
    assert_eq!(
        metric(&metrics, "switchboard_tls_handshakes_total", "timeout"),
        20.0
    );
    // The API and the listeners still serve.
    assert_eq!(s.servers("?service=echo").await.len(), 1);
    assert_eq!(common::echo::echo_through(mqtt, &sent).await, sent);
    let (_, forwarders) = s.get("/v1/forwarders").await;
    let mqtt_entry = forwarders["forwarders"][1].clone();
    assert_eq!(
        mqtt_entry["mqtt_affinity"]["malformed"], 1000,
        "{forwarders}"
    );
    assert_eq!(mqtt_entry["mqtt_affinity"]["keyed"], 2, "{forwarders}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_forward_listeners_certificate_while_relays_keep_going() {
    if !tools::tools_ready("forward tls rotation", &["openssl"], &[]) {
        return;
    }
    let pki = Pki::new();
    let echo = common::echo::Echo::start().await;
    let config = format!(
        "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n\
         tls_cert = {:?}\ntls_key = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let mut server = common::process::Server::start_with(Options {
        config: Some(config),
        forwards: 1,
        ..Options::default()
    });
    server.register_addr("echo", &echo.addr.to_string()).await;
    let fwd = server.forward_addrs[0];
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap().to_owned();
    let serial = || async {
        let out = s_client(
            &[
                "-connect",
                &fwd.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
                &ca,
            ],
            "",
        )
        .await;
        served_serial(&out)
    };
    assert_eq!(serial().await.as_deref(), Some("01"));

    let files = switchboard::tls::client::ClientFiles {
        ca_cert: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    let config = switchboard::tls::client::client_config(&files).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(fwd).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        held.push(tls);
    }
    pki.issue_server(2, "server");
    server.hup();
    server.wait_log("tls: reloaded a certificate");
    assert_eq!(
        serial().await.as_deref(),
        Some("02"),
        "new connections: the new one"
    );
    for tls in &mut held {
        tls.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong", "an open relay kept going");
    }
    pki.write("server.pem", "not a certificate\n");
    server.hup();
    server.wait_log("the running one stays");
    assert_eq!(serial().await.as_deref(), Some("02"));
}

#[test]
fn check_and_the_start_name_the_forward_key_of_a_bad_certificate_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        format!(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            pki.path("server.pem"),
            pki.path("client.key")
        ),
    )
    .unwrap();
    for args in [
        vec!["check", "--config", path.to_str().unwrap()],
        vec![
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--db",
            "sqlite::memory:",
        ],
    ] {
        let out = Command::new(common::process::binary())
            .args(&args)
            .env_remove("SWITCHBOARD_REGISTER_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains("forward[0].tls_key"), "{args:?}: {err}");
    }
}
