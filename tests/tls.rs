//! HTTPS on the API (SPEC 9), black-box with clients no one here wrote: curl, openssl
//! s_client and Python's ssl beside the client crate and the operator commands; client
//! certificates (refused at the handshake when required, a backend's writes guarded by
//! one when configured); rotation on SIGHUP under 100 kept-alive clients; handshakes
//! that never finish closed within the header timeout; bad files refused by `check`
//! and at start. Certificates are made by the tests (`common::certs`).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::certs::Pki;
use common::{Api, Options, PATIENCE, Server};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// An in-process server serving HTTPS with `pki`'s server certificate.
async fn https_server(pki: &Pki, extra: &str) -> Server {
    Server::start_with(Options {
        config: Some(pki.tls_section(extra)),
        ..Options::default()
    })
    .await
}

/// Runs a program to completion (within [`PATIENCE`]): (exit code, stdout, stderr).
async fn run(program: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("{program} must be installed (.ci/run installs it): {err}"));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(pki: &Pki, name: &str) -> String {
    pki.path(name).to_str().expect("utf-8 path").to_owned()
}

#[tokio::test]
async fn curl_with_the_ca_gets_servers_over_https_and_without_it_is_refused() {
    let pki = Pki::new();
    let s = https_server(&pki, "").await;
    let url = format!(
        "https://localhost:{}/servers?service=default",
        s.http_addr.port()
    );
    let ca = path(&pki, "ca.pem");
    let (code, body, err) = run("curl", &["-sS", "--cacert", &ca, &url], b"").await;
    assert_eq!(code, 0, "curl with the CA: {err}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert!(answer["servers"].is_array(), "{answer}");
    // The system's roots do not know the private CA: curl refuses (60: peer certificate).
    let (code, _, err) = run("curl", &["-sS", &url], b"").await;
    assert_eq!(
        code, 60,
        "curl without the CA must refuse the certificate: {err}"
    );
    // HTTPS only: plain HTTP on the port gets no answer.
    let plain = format!("http://127.0.0.1:{}/healthz", s.http_addr.port());
    let (code, out, _) = run("curl", &["-sS", "--max-time", "5", &plain], b"").await;
    assert_ne!(code, 0, "plain HTTP answered on the HTTPS port: {out}");
    // The hot routes (fast path) and the rest (hyper) both answer over TLS.
    let api = Api::https(s.http_addr, &pki.read("ca.pem"), None);
    let r = api.register_addr("default", "10.0.0.1:6666").await;
    assert_eq!(api.heartbeat(&r, 3).await.0, 200);
    assert_eq!(api.servers("?service=default").await, ["10.0.0.1:6666"]);
    let (status, _) = api.get("/v1/services").await;
    assert_eq!(status, 200);
    let metrics = api.metrics_text().await;
    assert!(
        metrics.contains(r#"switchboard_tls_handshakes_total{listener="http",result="ok"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"switchboard_tls_certificate_expiry_timestamp_seconds{listener="http"} 4070908800"#
        ),
        "the expiry gauge is the certificate's notAfter (2099-01-01): {metrics}"
    );
}

#[tokio::test]
async fn openssl_s_client_sees_both_versions_the_chain_and_alpn() {
    let pki = Pki::new();
    let s = https_server(&pki, "").await;
    let connect = format!("127.0.0.1:{}", s.http_addr.port());
    let ca = path(&pki, "ca.pem");
    let base = [
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "localhost",
        "-CAfile",
        &ca,
    ];
    let with = |more: &[&'static str]| {
        let mut args: Vec<String> = base.iter().map(|a| (*a).to_owned()).collect();
        args.extend(more.iter().map(|a| (*a).to_owned()));
        args
    };
    let s_client = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("openssl", &refs, b"").await
    };

    let (code, out, err) = s_client(with(&["-alpn", "h2,http/1.1", "-showcerts"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Protocol  : TLSv1.3") || out.contains("TLSv1.3"),
        "{out}"
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "ALPN: {out}");
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "the chain verifies: {out}"
    );
    assert_eq!(
        out.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf and intermediate sent: {out}"
    );

    let (code, out, err) = s_client(with(&["-tls1_2"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("TLSv1.2"), "{out}");
    // Nothing older than TLS 1.2.
    let (code, out, _) = s_client(with(&["-tls1_1"])).await;
    assert!(
        code != 0 || !out.contains("Verify return code: 0 (ok)"),
        "{out}"
    );
    // A client that offers only another protocol is refused (no silent fallback).
    let (code, out, err) = s_client(with(&["-alpn", "h2"])).await;
    assert!(
        code != 0 || err.contains("alert") || out.contains("no peer certificate"),
        "h2 only: {out}{err}"
    );
}

#[tokio::test]
async fn required_client_certificates_are_checked_at_the_handshake() {
    let pki = Pki::new();
    let extra = format!(
        "client_ca = {:?}\nclient_auth = \"required\"",
        pki.path("client-ca.pem")
    );
    let s = https_server(&pki, &extra).await;
    let url = format!("https://localhost:{}/healthz", s.http_addr.port());
    let ca = path(&pki, "ca.pem");
    let curl = |cert: Option<(&str, &str)>| {
        let mut args = vec![
            "-sS".to_owned(),
            "--cacert".to_owned(),
            ca.clone(),
            url.clone(),
        ];
        if let Some((c, k)) = cert {
            args.extend([
                "--cert".to_owned(),
                path(&pki, c),
                "--key".to_owned(),
                path(&pki, k),
            ]);
        }
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run("curl", &refs, b"").await
        }
    };
    let (code, body, err) = curl(Some(("client.pem", "client.key"))).await;
    assert_eq!(code, 0, "a good client certificate: {err}");
    assert!(body.contains("ok"), "{body}");
    let (code, _, _) = curl(None).await;
    assert_ne!(code, 0, "no client certificate must be refused");
    let (code, _, _) = curl(Some(("other-client.pem", "other-client.key"))).await;
    assert_ne!(code, 0, "a certificate of another CA must be refused");

    // openssl sees the refusal in the handshake itself.
    let connect = format!("127.0.0.1:{}", s.http_addr.port());
    let (code, out, err) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-ign_eof",
            "-cert",
            &path(&pki, "other-client.pem"),
            "-key",
            &path(&pki, "other-client.key"),
        ],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(
        !out.contains("\"status\""),
        "answered a wrong certificate: {out}"
    );
    // TLS 1.3 sends the client's certificate after the server's Finished: the refusal
    // is the alert that follows (unknown CA), read once s_client keeps reading.
    assert!(
        err.contains("alert") || out.contains("alert"),
        "code {code}: {out}{err}"
    );

    let metrics = Api::https(
        s.http_addr,
        &pki.read("ca.pem"),
        Some((&pki.read("client.pem"), &pki.read("client.key"))),
    )
    .metrics_text()
    .await;
    assert!(
        metrics.contains(r#"switchboard_tls_handshakes_total{listener="http",result="failed"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn registering_needs_a_verified_client_certificate_when_configured_reads_do_not() {
    let pki = Pki::new();
    let extra = format!(
        "client_ca = {:?}\nclient_auth = \"optional\"\nregister_requires_client_cert = true",
        pki.path("client-ca.pem")
    );
    let s = https_server(&pki, &extra).await;
    let ca = pki.read("ca.pem");
    let backend = Api::https(
        s.http_addr,
        &ca,
        Some((&pki.read("client.pem"), &pki.read("client.key"))),
    );
    let anonymous = Api::https(s.http_addr, &ca, None);

    let (status, body) = anonymous
        .post_raw(
            "/v1/services/default/instances",
            r#"{"address":"10.0.0.9:6666"}"#,
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{body}"
    );
    assert!(
        anonymous.servers("?service=default").await.is_empty(),
        "nothing was registered"
    );

    let r = backend.register_addr("default", "10.0.0.9:6666").await;
    assert_eq!(backend.heartbeat(&r, 1).await.0, 200);
    // The lease alone is not enough without the certificate (fast path and hyper).
    let (status, body) = anonymous.heartbeat(&r, 1).await;
    assert_eq!(status, 401, "{body}");
    let resp = anonymous
        .client
        .delete(anonymous.url(&format!("/v1/services/default/instances/{}", r.id)))
        .header("X-Lease", &r.lease)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 401);
    // Devices read without one.
    assert_eq!(
        anonymous.servers("?service=default").await,
        ["10.0.0.9:6666"]
    );
}

#[tokio::test]
async fn python_ssl_and_the_client_crate_speak_to_it() {
    let pki = Pki::new();
    let s = https_server(&pki, "").await;
    let script = r#"
import http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
conn = http.client.HTTPSConnection("localhost", int(sys.argv[2]), context=ctx, timeout=10)
conn.request("GET", "/healthz")
resp = conn.getresponse()
print(resp.status, conn.sock.version(), conn.sock.selected_alpn_protocol(), json.loads(resp.read())["status"])
"#;
    let port = s.http_addr.port().to_string();
    let (code, out, err) = run(
        "python3",
        &["-c", script, &path(&pki, "ca.pem"), &port],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "200 TLSv1.3 None ok", "{out}");

    let url = format!("https://localhost:{port}");
    let registry = switchboard_client::Registry::builder([url.clone()])
        .ca_pem(pki.read("ca.pem"))
        .build()
        .expect("registry");
    let list = registry
        .resolve(&switchboard_client::Query::new("default"))
        .await
        .expect("servers over HTTPS");
    assert!(list.servers.is_empty());
    // Without the private CA the certificate is not trusted.
    let untrusting = switchboard_client::Registry::builder([url])
        .build()
        .expect("registry");
    assert!(
        untrusting
            .resolve(&switchboard_client::Query::new("default"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_operator_commands_take_a_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let extra = format!(
        "client_ca = {:?}\nclient_auth = \"required\"",
        pki.path("client-ca.pem")
    );
    let s = https_server(&pki, &extra).await;
    let server = format!("https://localhost:{}", s.http_addr.port());
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let (ca, cert, key) = (
        path(&pki, "ca.pem"),
        path(&pki, "client.pem"),
        path(&pki, "client.key"),
    );
    let (code, out, err) = run(
        bin,
        &[
            "services",
            "--server",
            &server,
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // The same through the environment.
    let out = Command::new(bin)
        .args(["services", "--json", "--server", &server])
        .env("SWITCHBOARD_CA_CERT", &ca)
        .env("SWITCHBOARD_CLIENT_CERT", &cert)
        .env("SWITCHBOARD_CLIENT_KEY", &key)
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the client certificate the handshake is refused: unreachable, exit 3.
    let (code, _, err) = run(
        bin,
        &["services", "--server", &server, "--ca-cert", &ca],
        b"",
    )
    .await;
    assert_eq!(code, 3, "{err}");
    // A CA file that is not PEM is a usage error naming the flags.
    let (code, _, err) = run(
        bin,
        &["services", "--server", &server, "--ca-cert", &key],
        b"",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
}

/// Reads the served certificate's serial with openssl: `serial=...`.
async fn served_serial(port: u16, ca: &str) -> String {
    let connect = format!("127.0.0.1:{port}");
    let (_, out, err) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            ca,
        ],
        b"",
    )
    .await;
    let (code, serial, _) = run("openssl", &["x509", "-noout", "-serial"], out.as_bytes()).await;
    assert_eq!(code, 0, "no certificate in s_client's output: {out}{err}");
    serial.trim().to_owned()
}

/// A kept-alive TLS client: GET /healthz on one connection, again and again.
struct KeptAlive {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl KeptAlive {
    async fn open(port: u16, connector: &tokio_rustls::TlsConnector) -> KeptAlive {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        KeptAlive {
            stream: connector.connect(name, tcp).await.expect("handshake"),
        }
    }

    /// One request; the answer's status line.
    async fn ask(&mut self) -> String {
        self.stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0; 1024];
        let mut got = 0;
        loop {
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut buf[got..]))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "closed by the server");
            got += n;
            let text = String::from_utf8_lossy(&buf[..got]);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if body.len() >= len {
                    return head.lines().next().unwrap_or_default().to_owned();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_while_kept_alive_clients_keep_answering() {
    let pki = Pki::new();
    let mut server = common::process::Server::start_with(Options {
        config: Some(pki.tls_section("")),
        ..Options::default()
    });
    let port = server.http_addr.port();
    let ca = path(&pki, "ca.pem");
    assert_eq!(served_serial(port, &ca).await, "serial=01");

    // One client configuration for all of them, trusting the test CA.
    let files = switchboard::tls::client::ClientFiles {
        ca_cert: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    let config = switchboard::tls::client::client_config(&files).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = KeptAlive::open(port, &connector).await;
        assert_eq!(c.ask().await, "HTTP/1.1 200 OK");
        clients.push(c);
    }
    // Rotate: new files in place, then SIGHUP; the clients keep asking meanwhile.
    pki.issue_server(2, "server");
    server.hup();
    server.wait_log("tls: reloaded a certificate");
    for c in &mut clients {
        assert_eq!(
            c.ask().await,
            "HTTP/1.1 200 OK",
            "an open connection kept going"
        );
    }
    assert_eq!(served_serial(port, &ca).await, "serial=02");

    // A bad file changes nothing and is logged.
    pki.write("server.pem", "not a certificate\n");
    server.hup();
    server.wait_log("the running one stays");
    assert_eq!(served_serial(port, &ca).await, "serial=02");
    for c in &mut clients {
        assert_eq!(c.ask().await, "HTTP/1.1 200 OK");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_are_closed_within_the_header_timeout() {
    let pki = Pki::new();
    let s = Server::start_with(Options {
        config: Some(format!(
            "http_header_timeout_secs = 1\n{}",
            pki.tls_section("")
        )),
        ..Options::default()
    })
    .await;
    let api = Api::https(s.http_addr, &pki.read("ca.pem"), None);
    // Half a ClientHello: a TLS record header promising 512 bytes, and 5 of them.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..500 {
        let mut c = tokio::net::TcpStream::connect(s.http_addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            c.write_all(half_hello).await.expect("write");
        }
        held.push(c);
    }
    // HTTPS keeps answering while they are held.
    assert!(api.servers("?service=default").await.is_empty());
    let deadline = started + Duration::from_secs(1) + PATIENCE;
    for mut c in held {
        let mut buf = [0u8; 64];
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // an alert, then the close
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "a connection that never finished its handshake stayed open"
        );
    }
    let metrics = api.metrics_text().await;
    let timeouts: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"switchboard_tls_handshakes_total{listener="http",result="timeout"}"#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        timeouts >= 500.0,
        "500 handshakes timed out, counted {timeouts}: {metrics}"
    );
}

#[tokio::test]
async fn bad_files_are_refused_by_check_and_at_start_naming_the_key() {
    let pki = Pki::new();
    pki.issue_expired("expired");
    let other = common::certs::Ca::root("Other");
    let (_, stray_key) = other.server(7, (2024, 2099));
    pki.write("stray.key", &stray_key);
    pki.write("garbage.pem", "hello\n");
    let config = |cert: &str, key: &str| {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            pki.path(cert),
            pki.path(key)
        )
    };
    let cases = [
        (
            config("missing.pem", "server.key"),
            "tls.cert",
            "cannot read",
        ),
        (
            config("garbage.pem", "server.key"),
            "tls.cert",
            "no PEM certificate",
        ),
        (
            config("server.pem", "garbage.pem"),
            "tls.key",
            "private key",
        ),
        (config("server.pem", "stray.key"), "tls.key", "tls.cert"),
        (config("expired.pem", "expired.key"), "tls.cert", "expired"),
        (
            format!(
                "{}client_ca = {:?}\nclient_auth = \"required\"\n",
                config("server.pem", "server.key"),
                pki.path("garbage.pem")
            ),
            "tls.client_ca",
            "no PEM certificate",
        ),
    ];
    let bin = env!("CARGO_BIN_EXE_switchboard");
    for (text, key, why) in &cases {
        let file = pki.dir().join("switchboard.toml");
        std::fs::write(&file, text).expect("config");
        let (code, _, err) = run(bin, &["check", "--config", file.to_str().unwrap()], b"").await;
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(key) && err.contains(why), "{text}: {err}");
        let args = switchboard::cli::ServeArgs {
            http: Some("127.0.0.1:0".into()),
            db: Some("sqlite::memory:".into()),
            no_forward: true,
            ..Default::default()
        };
        let config = switchboard::config::Config::from_toml(text, &args).expect("valid keys");
        let err = switchboard::app::start(config)
            .await
            .expect_err("a bad file must stop the start");
        assert!(err.to_string().contains(key), "{err}");
    }
    let file = pki.dir().join("switchboard.toml");
    std::fs::write(&file, config("server.pem", "server.key")).expect("config");
    let (code, out, err) = run(bin, &["check", "--config", file.to_str().unwrap()], b"").await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn tokens_in_clear_off_loopback_are_warned_about_at_start_and_in_readyz() {
    // Bound on every interface but asked only over loopback.
    let args = switchboard::cli::ServeArgs {
        http: Some("0.0.0.0:0".into()),
        db: Some("sqlite::memory:".into()),
        no_forward: true,
        ..Default::default()
    };
    let config = switchboard::config::Config::from_toml("[tokens]\nregister = \"r3g\"", &args)
        .expect("config");
    let running = switchboard::app::start(config).await.expect("start");
    let api = Api::new(([127, 0, 0, 1], running.http_addr.port()).into());
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    let warning = body["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.contains("in clear") && warning.contains("[tls]"),
        "{body}"
    );
    running.stop().await.expect("stop");

    // With TLS, or on loopback, nothing to warn about.
    let pki = Pki::new();
    let s = https_server(&pki, "").await;
    let api = Api::https(s.http_addr, &pki.read("ca.pem"), None);
    let (_, body) = api.get("/readyz").await;
    assert_eq!(body, json!({"status": "ready"}));
}
