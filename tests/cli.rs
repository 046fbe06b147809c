//! The command line and config file of SPEC section 7, through the real binary.

mod common;

use std::process::Command;

use common::process::{Server, binary};

fn serve(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .arg("serve")
        .args(args)
        .env_remove("SWITCHBOARD_REGISTER_TOKEN")
        .output()
        .expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `serve` on a config file with this text and an in-memory store.
fn serve_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, config).unwrap();
    serve(&[
        "--config",
        path.to_str().unwrap(),
        "--db",
        "sqlite::memory:",
    ])
}

#[test]
fn help_describes_every_flag() {
    let out = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--http",
        "--db",
        "--forward",
        "--no-forward",
        "--insecure",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

#[test]
fn a_public_bind_without_register_token_is_refused() {
    let (code, err) = serve(&[
        "--http",
        "0.0.0.0:0",
        "--db",
        "sqlite::memory:",
        "--no-forward",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("register token") && err.contains("--insecure"),
        "{err}"
    );
}

#[test]
fn an_unknown_config_key_stops_the_start_and_is_named() {
    let (code, err) = serve_config("http = \"127.0.0.1:0\"\nlisten_backlog = 5\n");
    assert_ne!(code, 0);
    assert!(err.contains("listen_backlog"), "{err}");
    let (code, err) = serve_config("[[forward]]\nlisten = \"127.0.0.1:0\"\nhash = \"cookie\"\n");
    assert_ne!(code, 0);
    assert!(err.contains("forward[0].hash"), "{err}");
}

#[test]
fn a_bad_flag_value_is_named() {
    let (code, err) = serve(&["--http", "nonsense", "--db", "sqlite::memory:"]);
    assert_ne!(code, 0);
    assert!(err.contains("http"), "{err}");
    let (code, err) = serve(&["--http", "127.0.0.1:0", "--db", "mysql://x"]);
    assert_ne!(code, 0);
    assert!(err.contains("db"), "{err}");
}

#[tokio::test]
async fn sigterm_exits_zero_after_in_flight_requests() {
    let s = Server::start();
    let r = s.register_addr("default", "127.0.0.1:7001").await;
    assert_eq!(s.heartbeat(&r, 1).await.0, 200);
    assert_eq!(s.terminate(), 0);
}

#[tokio::test]
async fn the_default_store_is_switchboard_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--http", "127.0.0.1:0", "--no-forward"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = dir.path().join("switchboard.db");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(file.exists(), "no switchboard.db created");
}

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("SWITCHBOARD_REGISTER_TOKEN")
        .output()
        .expect("run switchboard check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_a_config_file_without_starting_anything() {
    let (code, stdout, _) = check(
        "http = \"127.0.0.1:0\"\n[limits]\nread_per_sec = 100\n\
         [[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"default\"\ntcp_keepalive_secs = 30\n",
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("is valid"), "{stdout}");
    for (bad, key) in [
        ("[rebalance]\ntolerence = 0.2\n", "tolerence"),
        ("http_idle_timeout_secs = 0\n", "http_idle_timeout_secs"),
        (
            "[limits]\nregister_per_sec = 0\n",
            "limits.register_per_sec",
        ),
        (
            "[[forward]]\nlisten = \"127.0.0.1:0\"\ntcp_keepalive_secs = 99999\n",
            "tcp_keepalive_secs",
        ),
        ("http = \"0.0.0.0:8080\"\n", "register token"),
    ] {
        let (code, _, stderr) = check(bad);
        assert_eq!(code, 2, "{bad:?} accepted");
        assert!(
            stderr.contains(key),
            "{bad:?}: the message names {key}: {stderr}"
        );
    }
}

/// The README's old example: a UDP forward listener and `[dns]` on one address.
const SHARED_ADDRESS: &str = "http = \"127.0.0.1:0\"\n\
    [[forward]]\nlisten = \"127.0.0.1:0\"\n\
    [[forward]]\nlisten = \"127.0.0.1:45353\"\nservice = \"dns\"\nprotocol = \"udp\"\n\
    [dns]\nlisten = \"127.0.0.1:45353\"\n";

#[test]
fn check_refuses_two_listeners_on_one_address_naming_both_keys() {
    let (code, _, stderr) = check(SHARED_ADDRESS);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid dns.listen") && stderr.contains("forward[1].listen"),
        "{stderr}"
    );
    let (code, _, stderr) = check(
        "[[forward]]\nlisten = \"127.0.0.1:46665\"\nservice = \"a\"\n\
         [[forward]]\nlisten = \"127.0.0.1:46665\"\nservice = \"b\"\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid forward[1].listen") && stderr.contains("forward[0].listen"),
        "{stderr}"
    );
    let (code, stdout, stderr) = check(
        "[[forward]]\nlisten = \"127.0.0.1:46665\"\n\
         [[forward]]\nlisten = \"127.0.0.1:46665\"\nprotocol = \"udp\"\n",
    );
    assert_eq!(code, 0, "one port, two protocols: {stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
}

#[test]
fn the_start_refuses_two_listeners_on_one_address() {
    let (code, err) = serve_config(SHARED_ADDRESS);
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid dns.listen") && err.contains("forward[1].listen"),
        "{err}"
    );
    assert!(!err.contains("listening"), "bound before refusing: {err}");
}

#[test]
fn the_readme_configuration_example_passes_check() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## Configuration").expect("config section")..];
    let start = section.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    // The example's `[tls]` names files under /etc/switchboard/tls: the same names in a
    // directory of test certificates, so `check` loads real ones.
    let pki = common::certs::Pki::new();
    let example = example.replace(
        "/etc/switchboard/tls/",
        &format!("{}/", pki.dir().display()),
    );
    assert!(example.contains("[tls]"), "the example shows [tls]");
    let (code, stdout, stderr) = check(&example);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
}
