//! The programs of `sdk-examples/`, run end to end against the real `switchboard` binary
//! (`serve --db sqlite::memory:`, HTTP and forward listeners on port 0).
//!
//! For each language the backend registers through its own code, the device resolves
//! and gets an echo through it, and the registry's listing shows the backend's reported
//! connection count reaching it. Backends are also made to register again after the
//! registry forgot them (404), to close a connection when told to `shed` (a paced drain),
//! and to deregister on SIGTERM. `seed_scenario_*` is the setup our first users describe:
//! two Netty servers behind the forwarder, four devices landing 2 / 2.
//!
//! The `*_over_https` tests run the same life against a server with `[tls]` (a server
//! certificate under a private root CA, made by `common/certs.rs`): the examples get
//! `https://localhost:PORT` and that root in `SWITCHBOARD_CA_CERT`, and a device without
//! it must refuse the server. Over mutual TLS, the backends that can show a client
//! certificate (Python, Node.js, shell) register with one and are refused without it.
//! The harness's own calls speak TLS then (rustls, showing the test client certificate).
//!
//! A missing toolchain (java, javac, Debian's libnetty-java, node, python3, gcc, curl,
//! ss) fails the test where `CI` is set, and prints `SKIPPED` otherwise. The server is
//! `common/process.rs`'s; the rest is on purpose without async: std sockets, child
//! processes killed by PID, every wait under a deadline.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

mod common;
// The harness tests/sdk_storm.rs uses too; this file uses a part of it.
#[allow(dead_code)]
#[path = "common/sdk.rs"]
mod sdk;
use common::certs::Pki;
use common::{Options, process, tools};
use sdk::{Patience, Proc, eventually, example_command, examples, free_port};

/// How long any one condition may take to become true (polled every 50 ms).
const PATIENCE: Patience = Patience {
    limit: Duration::from_secs(20),
    poll: Duration::from_millis(50),
};
/// Registration TTL for every backend: heartbeats every second.
const TTL_SECS: &str = "3";
/// The server's `[rebalance] reconnect_jitter_ms`: devices wait less than this (their
/// default is 5000) before reconnecting.
const JITTER_MS: u64 = 100;
/// The parts of Debian's libnetty-java a Netty echo server needs (`netty-all.jar` is
/// manifest-only).
const NETTY_JARS: [&str; 6] = [
    "/usr/share/java/netty-common.jar",
    "/usr/share/java/netty-buffer.jar",
    "/usr/share/java/netty-transport.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-handler.jar",
];

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// What follows `needle` in `line`, up to the first character that is not part of an
/// address or id.
fn after<'a>(line: &'a str, needle: &str) -> &'a str {
    let rest = line
        .split(needle)
        .nth(1)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]-_".contains(c)))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The real server ([`process::Server`]): `serve` with one forward listener for
/// `default`, and a short reconnect jitter; HTTPS only when started with
/// [`Server::start_https`]. The harness's calls to it are this file's own (HTTP/1.0).
struct Server {
    /// Killed (by PID) when the server drops.
    process: process::Server,
    http: SocketAddr,
    forward: SocketAddr,
    /// Set when the API serves HTTPS.
    tls: Option<Tls>,
}

impl Drop for Server {
    /// A failing test prints the server's log, as it prints each example's output.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- switchboard output:\n{}",
                self.process.logged().join("\n")
            );
        }
    }
}

/// An HTTPS server's certificates and the harness's TLS client for it.
struct Tls {
    /// `ca.pem` is the root the examples trust (`SWITCHBOARD_CA_CERT`).
    pki: Pki,
    /// Trusts only `ca.pem`; shows `client.pem` when the server asks for a certificate.
    client: Arc<rustls::ClientConfig>,
}

/// `[tls]` lines that ask every client for a certificate (`client.pem` verifies) and
/// let only a backend that shows one register, heartbeat or deregister.
fn mutual_tls(pki: &Pki) -> String {
    format!(
        "client_ca = {:?}\nclient_auth = \"optional\"\nregister_requires_client_cert = true\n",
        pki.path("client-ca.pem")
    )
}

impl Tls {
    fn new(pki: Pki) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pki.read("ca.pem")) {
            roots.add(cert.expect("ca.pem")).expect("a root CA");
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&pki.read("client.pem"))
                .map(|cert| cert.expect("client.pem"))
                .collect();
        let key = PrivateKeyDer::from_pem_slice(&pki.read("client.key")).expect("client.key");
        // The server's provider. rustls 0.23.48 deprecates it (no post-quantum key
        // exchange), which the test does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client certificate");
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls {
            pki,
            client: Arc::new(client),
        }
    }
}

impl Server {
    fn start() -> Server {
        Server::spawn(None)
    }

    /// HTTPS only: `[tls]` with a new [`Pki`]'s `server.pem` (for `localhost` and
    /// `127.0.0.1`, under an intermediate) and `extra` lines.
    fn start_https(extra: impl FnOnce(&Pki) -> String) -> Server {
        let pki = Pki::new();
        let section = pki.tls_section(&extra(&pki));
        Server::spawn(Some((Tls::new(pki), section)))
    }

    fn spawn(tls: Option<(Tls, String)>) -> Server {
        let mut toml = format!("[rebalance]\nreconnect_jitter_ms = {JITTER_MS}\n");
        let tls = tls.map(|(tls, section)| {
            toml.push_str(&section);
            tls
        });
        let process = process::Server::start_with(Options {
            config: Some(toml),
            forward: vec!["127.0.0.1:0=default".into()],
            forwards: 1,
            env: vec![("NO_COLOR".into(), "1".into())],
            ..Options::default()
        });
        Server {
            http: process.http_addr,
            forward: process.forward_addrs[0],
            process,
            tls,
        }
    }

    /// What the examples get as `SWITCHBOARD_SERVER`: over HTTPS the name the
    /// certificate is for.
    fn url(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.http),
            Some(_) => format!("https://localhost:{}", self.http.port()),
        }
    }

    /// The root CA an HTTPS server's certificate chains to (PEM).
    fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.pki.path("ca.pem"))
    }

    /// One HTTP/1.0 request (as the C device makes them; over TLS for an HTTPS server):
    /// status and body.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        self.call_with(method, path, "", body)
    }

    /// [`Server::call`] with extra header lines (each ending in `\r\n`).
    fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let conn = TcpStream::connect_timeout(&self.http, Duration::from_secs(5))
            .expect("connect to the registry");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        let host = match self.tls {
            None => self.http.to_string(),
            Some(_) => format!("localhost:{}", self.http.port()),
        };
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             {headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn: Box<dyn ReadWrite> = match &self.tls {
            None => Box::new(conn),
            Some(tls) => {
                let name = ServerName::try_from("localhost").expect("server name");
                let session = rustls::ClientConnection::new(Arc::clone(&tls.client), name)
                    .expect("TLS client");
                Box::new(rustls::StreamOwned::new(session, conn))
            }
        };
        conn.write_all(request.as_bytes())
            .and_then(|()| conn.flush())
            .unwrap_or_else(|e| panic!("send {method} {path}: {e}"));
        let mut raw = Vec::new();
        match conn.read_to_end(&mut raw) {
            Ok(_) => {}
            // The server closed the TCP connection without a TLS close_notify: the answer
            // (HTTP/1.0, ended by the close) is all there.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => panic!("read the answer to {method} {path}: {e}"),
        }
        let answer = String::from_utf8_lossy(&raw);
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad answer to {method} {path}: {answer:?}"));
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_owned())
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// The admin listing of `default`.
    fn instances(&self) -> Vec<Value> {
        let listing = self.json("GET", "/v1/services/default/instances", None);
        listing["instances"].as_array().cloned().unwrap_or_default()
    }

    fn instance(&self, id: &str) -> Option<Value> {
        self.instances().into_iter().find(|i| i["id"] == id)
    }

    /// Waits until instance `id` is listed with a reported count satisfying `ok`.
    fn wait_connections(&self, id: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
        eventually(
            PATIENCE,
            &format!("instance {id}: connections {what}"),
            || {
                let n = self.instance(id)?["connections"].as_u64()?;
                ok(n).then_some(n)
            },
        )
    }

    /// Waits until instance `id` is listed `up` at `address`.
    fn wait_up(&self, id: &str, address: &str) {
        let deadline = Instant::now() + PATIENCE.limit;
        loop {
            let listing = self.instances();
            let up = listing
                .iter()
                .any(|i| i["id"] == id && i["state"] == "up" && i["address"] == address);
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} not up at {address}; listing: {listing:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain or a TLS connection, for [`Server::call_with`].
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A std echo server that counts the connections it accepted.
struct EchoServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (counter, opened) = (Arc::clone(&accepted), Arc::clone(&open));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                if let Ok(handle) = conn.try_clone() {
                    opened.lock().expect("echo lock").push(handle);
                }
                std::thread::spawn(move || {
                    if let Ok(mut reader) = conn.try_clone() {
                        let _ = std::io::copy(&mut reader, &mut conn);
                    }
                });
            }
        });
        EchoServer {
            addr,
            accepted,
            open,
        }
    }

    /// Closes every connection it accepted so far.
    fn close_all(&self) {
        for conn in self.open.lock().expect("echo lock").drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `program args...` with the environment every example reads, pointed at `server`.
/// For an HTTPS server, also `SWITCHBOARD_CA_CERT` (its root CA); never a client
/// certificate (see [`with_client_cert`]).
fn example(server: &Server, program: &str, args: &[&dyn AsRef<OsStr>]) -> Command {
    let forwarder = server.forward.to_string();
    let mut cmd = example_command(program, args, &server.url(), &forwarder);
    cmd.env("TTL_SECS", TTL_SECS)
        .env("ADVERTISE_HOST", "127.0.0.1")
        .env_remove("PORT");
    if let Some(ca) = server.ca_cert() {
        cmd.env("SWITCHBOARD_CA_CERT", ca);
    }
    cmd
}

/// `cmd` showing the HTTPS server's `client.pem` (issued under its root, CN
/// `backend-1`) and `client.key`.
fn with_client_cert(server: &Server, mut cmd: Command) -> Command {
    let pki = &server.tls.as_ref().expect("an HTTPS server").pki;
    cmd.env("SWITCHBOARD_CLIENT_CERT", pki.path("client.pem"))
        .env("SWITCHBOARD_CLIENT_KEY", pki.path("client.key"));
    cmd
}

/// A backend and its device, through the whole life of a registration: registered,
/// serving the device (count reported >= 1), registered again after the registry forgot
/// it, shedding the device's connection when drained with `evacuate_per_sec` (count back
/// to 0; skipped for backends that do not own their connections), deregistered on SIGTERM.
fn backend_life(
    lang: &str,
    server: &Server,
    mut backend: Command,
    known_address: Option<String>,
    mut device: Command,
    sheds: bool,
) {
    let mut backend = Proc::spawn(&format!("{lang} backend"), &mut backend, PATIENCE);
    let address = known_address
        .unwrap_or_else(|| after(&backend.wait_for("listening on "), "listening on ").to_owned());
    let id = after(&backend.wait_for("registered id="), "registered id=").to_owned();
    server.wait_up(&id, &address);

    let mut device = Proc::spawn(&format!("{lang} device"), &mut device, PATIENCE);
    device.wait_for(&format!("connected to {address}"));
    device.wait_for("echo ok");
    server.wait_connections(&id, ">= 1", |n| n >= 1);

    // The registry forgets the instance: the next heartbeat answers 404.
    let (status, text) = server.call(
        "DELETE",
        &format!("/v1/services/default/instances/{id}"),
        None,
    );
    assert_eq!(status, 204, "admin deregistration: {text}");
    backend.wait_for("unknown instance; registering again");
    let id = after(&backend.wait_nth("registered id=", 1), "registered id=").to_owned();
    server.wait_up(&id, &address);
    server.wait_connections(&id, ">= 1 after registering again", |n| n >= 1);

    if sheds {
        // A paced drain: shed = 1 per heartbeat until the backend reports 0.
        let drained = server.json(
            "POST",
            &format!("/v1/services/default/instances/{id}/drain"),
            Some(json!({"evacuate_per_sec": 1})),
        );
        assert_eq!(drained["draining"], true, "{drained}");
        backend.wait_for("shed 1");
        device.wait_for("connection lost");
        server.wait_connections(&id, "back to 0 after shedding", |n| n == 0);
        // The device waits less than the registry's jitter, and finds nothing to hand
        // out but the forwarder.
        assert_jitter(&mut device);
        device.wait_for(&format!(
            "no servers; using the forwarder {}",
            server.forward
        ));
    }

    backend.terminate();
    backend.wait_for(&format!("deregistered id={id}"));
    assert!(
        server
            .instances()
            .iter()
            .all(|i| i["address"] != address.as_str()),
        "{lang}: still listed after SIGTERM: {:?}",
        server.instances()
    );
}

/// The device's first reconnect wait is below the registry's `reconnect_jitter_ms`.
fn assert_jitter(device: &mut Proc) {
    let line = device.wait_for("reconnecting in ");
    let wait: u64 = after(&line, "reconnecting in ")
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert!(wait < JITTER_MS, "{}: {line:?}", device.name());
}

/// The Java examples compiled once (`javac`, into the target dir) for every test.
fn java_classes() -> &'static Path {
    static CLASSES: OnceLock<PathBuf> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let (out, output) = sdk::javac(
            "sdk-examples-java",
            &NETTY_JARS,
            &["NettyBackend.java", "Device.java"],
        );
        assert!(
            output.status.success(),
            "javac failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    })
}

/// A compiled Java example with `args`, as [`example`] sets it up.
fn java(server: &Server, class: &str, args: &[&dyn AsRef<OsStr>]) -> Command {
    let classpath = format!("{}:{}", java_classes().display(), NETTY_JARS.join(":"));
    let mut cmd = example(server, "java", &[&"-cp", &classpath, &class]);
    cmd.args(args);
    cmd
}

fn java_ready(test: &str) -> bool {
    tools::tools_ready(test, &["java", "javac"], &NETTY_JARS)
}

// ---------------------------------------------------------------------------------------
// One test per language
// ---------------------------------------------------------------------------------------

#[test]
fn python_backend_and_device() {
    if !tools::tools_ready("python_backend_and_device", &["python3"], &[]) {
        return;
    }
    let server = Server::start();
    let dir = examples().join("python");
    let backend = example(&server, "python3", &[&dir.join("backend.py"), &"0"]);
    let device = example(&server, "python3", &[&dir.join("device.py")]);
    backend_life("python", &server, backend, None, device, true);
}

#[test]
fn node_backend_and_device() {
    if !tools::tools_ready("node_backend_and_device", &["node"], &[]) {
        return;
    }
    let server = Server::start();
    let dir = examples().join("node");
    let backend = example(&server, "node", &[&dir.join("backend.js"), &"0"]);
    let device = example(&server, "node", &[&dir.join("device.js")]);
    backend_life("node", &server, backend, None, device, true);
}

#[test]
fn java_netty_backend_and_device() {
    if !java_ready("java_netty_backend_and_device") {
        return;
    }
    let server = Server::start();
    let backend = java(&server, "NettyBackend", &[&"0"]);
    let device = java(&server, "Device", &[]);
    backend_life("java", &server, backend, None, device, true);
}

/// The sidecar registers a server that cannot register itself (here a std echo server)
/// and reports its established connections from `ss`; JSON is read with sed (`JQ=`), the
/// fallback where jq is not installed. It cannot close another process's connections,
/// so shedding is not exercised.
#[test]
fn shell_sidecar_and_device() {
    if !tools::tools_ready(
        "shell_sidecar_and_device",
        &["bash", "curl", "ss", "timeout"],
        &[],
    ) {
        return;
    }
    let server = Server::start();
    let echo = EchoServer::start();
    let dir = examples().join("shell");
    let port = echo.addr.port().to_string();
    let mut sidecar = example(&server, "bash", &[&dir.join("sidecar.sh"), &port]);
    sidecar.env("JQ", "");
    let device = example(&server, "bash", &[&dir.join("device.sh")]);
    backend_life(
        "shell",
        &server,
        sidecar,
        Some(echo.addr.to_string()),
        device,
        false,
    );
    assert!(echo.accepted() >= 1, "the echo server saw no connection");
}

// ---------------------------------------------------------------------------------------
// Over HTTPS, with a private CA
// ---------------------------------------------------------------------------------------

/// How OpenSSL (Python's ssl, Node.js, curl) refuses a chain that ends at a root it does
/// not trust.
const OPENSSL_UNKNOWN_CA: &str = "unable to get local issuer certificate";

/// The device run without `SWITCHBOARD_CA_CERT` (the system's roots, which do not know
/// the test CA) refuses the HTTPS server, saying `needle`: the examples verify.
fn refuses_without_the_ca(lang: &str, mut device: Command, needle: &str) {
    device.env_remove("SWITCHBOARD_CA_CERT");
    let mut device = Proc::spawn(
        &format!("{lang} device without the CA"),
        &mut device,
        PATIENCE,
    );
    device.wait_for(needle);
}

#[test]
fn python_backend_and_device_over_https() {
    if !tools::tools_ready("python_backend_and_device_over_https", &["python3"], &[]) {
        return;
    }
    let server = Server::start_https(|_| String::new());
    let dir = examples().join("python");
    let device = || example(&server, "python3", &[&dir.join("device.py")]);
    refuses_without_the_ca("python", device(), OPENSSL_UNKNOWN_CA);
    let backend = example(&server, "python3", &[&dir.join("backend.py"), &"0"]);
    backend_life("python (https)", &server, backend, None, device(), true);
}

#[test]
fn node_backend_and_device_over_https() {
    if !tools::tools_ready("node_backend_and_device_over_https", &["node"], &[]) {
        return;
    }
    let server = Server::start_https(|_| String::new());
    let dir = examples().join("node");
    let device = || example(&server, "node", &[&dir.join("device.js")]);
    refuses_without_the_ca("node", device(), OPENSSL_UNKNOWN_CA);
    let backend = example(&server, "node", &[&dir.join("backend.js"), &"0"]);
    backend_life("node (https)", &server, backend, None, device(), true);
}

#[test]
fn java_netty_backend_and_device_over_https() {
    if !java_ready("java_netty_backend_and_device_over_https") {
        return;
    }
    let server = Server::start_https(|_| String::new());
    let device = || java(&server, "Device", &[]);
    refuses_without_the_ca("java", device(), "PKIX path building failed");
    let backend = java(&server, "NettyBackend", &[&"0"]);
    backend_life("java (https)", &server, backend, None, device(), true);
}

/// As [`shell_sidecar_and_device`], over HTTPS (curl `--cacert`).
#[test]
fn shell_sidecar_and_device_over_https() {
    if !tools::tools_ready(
        "shell_sidecar_and_device_over_https",
        &["bash", "curl", "ss", "timeout"],
        &[],
    ) {
        return;
    }
    let server = Server::start_https(|_| String::new());
    let echo = EchoServer::start();
    let dir = examples().join("shell");
    let device = || example(&server, "bash", &[&dir.join("device.sh")]);
    refuses_without_the_ca("shell", device(), OPENSSL_UNKNOWN_CA);
    let port = echo.addr.port().to_string();
    let mut sidecar = example(&server, "bash", &[&dir.join("sidecar.sh"), &port]);
    sidecar.env("JQ", "");
    backend_life(
        "shell (https)",
        &server,
        sidecar,
        Some(echo.addr.to_string()),
        device(),
        false,
    );
    assert!(echo.accepted() >= 1, "the echo server saw no connection");
}

/// Mutual TLS: the server asks every client for a certificate and lets only a backend
/// that shows one register (`register_requires_client_cert`). The Python, Node.js and
/// shell backends are refused (401) without `SWITCHBOARD_CLIENT_CERT` and `_KEY`, and
/// with them register, heartbeat and deregister; a device that shows none is still
/// served. (The Java examples show no client certificate.)
#[test]
fn backends_show_a_client_certificate_over_mutual_tls() {
    if !tools::tools_ready(
        "backends_show_a_client_certificate_over_mutual_tls",
        &["python3", "node", "bash", "curl", "ss", "timeout"],
        &[],
    ) {
        return;
    }
    let server = Server::start_https(mutual_tls);
    let echo = EchoServer::start();
    let port = echo.addr.port().to_string();
    let backend = |lang: &str| -> Command {
        match lang {
            "python" => example(
                &server,
                "python3",
                &[&examples().join("python").join("backend.py"), &"0"],
            ),
            "node" => example(
                &server,
                "node",
                &[&examples().join("node").join("backend.js"), &"0"],
            ),
            _ => {
                let sidecar = examples().join("shell").join("sidecar.sh");
                let mut cmd = example(&server, "bash", &[&sidecar, &port]);
                cmd.env("JQ", "");
                cmd
            }
        }
    };
    let mut running = Vec::new();
    for lang in ["python", "node", "shell"] {
        let mut refused = Proc::spawn(
            &format!("{lang} backend without a client certificate"),
            &mut backend(lang),
            PATIENCE,
        );
        refused.wait_for("register answered 401");
        drop(refused);

        let mut shown = with_client_cert(&server, backend(lang));
        let mut shown = Proc::spawn(
            &format!("{lang} backend with a client certificate"),
            &mut shown,
            PATIENCE,
        );
        let id = after(&shown.wait_for("registered id="), "registered id=").to_owned();
        shown.wait_nth("heartbeat connections=", 1);
        let instance = server.instance(&id);
        assert!(
            instance.as_ref().is_some_and(|i| i["state"] == "up"),
            "{lang}: {instance:?}"
        );
        running.push((shown, id));
    }

    // A device without a certificate: still served the ranking.
    let mut device = example(
        &server,
        "python3",
        &[&examples().join("python").join("device.py")],
    );
    let mut device = Proc::spawn(
        "python device without a client certificate",
        &mut device,
        PATIENCE,
    );
    device.wait_for("servers 127.0.0.1:");
    device.wait_for("echo ok");
    drop(device);

    for (mut backend, id) in running {
        backend.terminate();
        backend.wait_for(&format!("deregistered id={id}"));
        assert!(server.instance(&id).is_none(), "{id} listed after SIGTERM");
    }
}

// ---------------------------------------------------------------------------------------
// Plain HTTP only
// ---------------------------------------------------------------------------------------

/// The firmware-style C device: `Accept: text/plain`, the first line that answers
/// (a dead server ranked first is skipped), and the forwarder when the registry is
/// unreachable.
#[test]
fn c_device_falls_back_to_the_next_server_and_to_the_forwarder() {
    if !tools::tools_ready("c_device_falls_back", &["gcc"], &[]) {
        return;
    }
    let binary = sdk::c_device("sdk-examples-c-device");

    let server = Server::start();
    let echo = EchoServer::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let register = |address: &str| {
        let body = json!({"address": address, "ttl_secs": 300});
        server.json("POST", "/v1/services/default/instances", Some(body))
    };
    let alive = register(&echo.addr.to_string());
    register(&dead);
    // The live one reports load, so the dead one is ranked first.
    let (status, text) = server.call_with(
        "PUT",
        &format!(
            "/v1/services/default/instances/{}/heartbeat",
            alive["id"].as_str().expect("id")
        ),
        &format!("X-Lease: {}\r\n", alive["lease"].as_str().expect("lease")),
        Some(json!({"connections": 5})),
    );
    assert_eq!(status, 200, "heartbeat: {text}");

    let mut device = Command::new(&binary);
    device
        .arg(server.http.to_string())
        .arg(server.forward.to_string())
        .arg("default")
        .env("PING_SECS", "1");
    let mut device = Proc::spawn("C device", &mut device, PATIENCE);
    device.wait_for(&format!("servers {dead} {}", echo.addr));
    device.wait_for(&format!("cannot connect to {dead}"));
    device.wait_for(&format!("connected to {}", echo.addr));
    device.wait_nth("echo ok", 1);
    assert!(echo.accepted() >= 1);
    // A lost connection: a short wait (the jitter from the answer's header), then the
    // same ranking again.
    echo.close_all();
    device.wait_for("connection lost");
    assert_jitter(&mut device);
    device.wait_nth(&format!("connected to {}", echo.addr), 1);
    drop(device);

    // The registry is unreachable: the forwarder relays to the live backend.
    let before = echo.accepted();
    let mut device = Command::new(&binary);
    device
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg(server.forward.to_string())
        .env("PING_SECS", "1");
    let mut device = Proc::spawn("C device (no registry)", &mut device, PATIENCE);
    device.wait_for(&format!(
        "registry unreachable; using the forwarder {}",
        server.forward
    ));
    device.wait_for(&format!("connected to {}", server.forward));
    device.wait_nth("echo ok", 1);
    assert!(
        echo.accepted() > before,
        "the forwarder did not reach the echo server"
    );
}

// ---------------------------------------------------------------------------------------
// The seed scenario
// ---------------------------------------------------------------------------------------

/// Two Netty backends (on 6666 and 6667 when free) registered through their own code;
/// four legacy Java devices that only know the forwarder's address land 2 / 2, as the
/// backends' own logs and their reported counts in the registry show. (The Rust device
/// of this scenario, on the client crate, lives with that crate's tests.)
#[test]
fn seed_scenario_two_netty_backends_behind_the_forwarder_get_two_devices_each() {
    if !java_ready("seed_scenario") {
        return;
    }
    let server = Server::start();
    let ports = match (
        TcpListener::bind("127.0.0.1:6666"),
        TcpListener::bind("127.0.0.1:6667"),
    ) {
        (Ok(_), Ok(_)) => [6666, 6667],
        _ => [0, 0],
    };
    let mut backends: Vec<(Proc, String)> = ports
        .iter()
        .map(|port| {
            let mut cmd = java(&server, "NettyBackend", &[&port.to_string()]);
            (
                Proc::spawn(&format!("netty backend :{port}"), &mut cmd, PATIENCE),
                String::new(),
            )
        })
        .collect();
    for (backend, address) in &mut backends {
        *address = after(&backend.wait_for("listening on "), "listening on ").to_owned();
    }
    let mut ids = Vec::new();
    for (backend, address) in &mut backends {
        let id = after(&backend.wait_for("registered id="), "registered id=").to_owned();
        server.wait_up(&id, address);
        ids.push(id);
    }

    let mut devices: Vec<Proc> = (0..4)
        .map(|n| {
            let mut cmd = java(&server, "Device", &[&server.forward.to_string()]);
            Proc::spawn(&format!("device {n}"), &mut cmd, PATIENCE)
        })
        .collect();
    for device in &mut devices {
        device.wait_for(&format!("connected to {}", server.forward));
        device.wait_for("echo ok");
    }

    let accepted = eventually(PATIENCE, "4 channels accepted by the backends", || {
        let counts: Vec<usize> = backends
            .iter_mut()
            .map(|(b, _)| b.count("accepted "))
            .collect();
        (counts.iter().sum::<usize>() >= 4).then_some(counts)
    });
    assert_eq!(accepted, [2, 2], "channels accepted per backend");
    for id in &ids {
        server.wait_connections(id, "== 2", |n| n == 2);
    }
}
