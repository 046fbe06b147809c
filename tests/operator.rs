//! The operator commands of SPEC section 7 (`services`, `instances`, `drain`,
//! `deregister`) through the real binary, against a real server: the in-process one,
//! which keeps running on the test's runtime while the CLI runs as a child process.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Options, PATIENCE, Registered, Server};
use serde_json::{Value, json};
use tokio::process::Command;

/// What one run of the CLI gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("--json output does not parse ({err}): {self:?}"))
    }

    /// Fails unless the run failed with `code` and exactly one line on stderr.
    fn failed_with(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:?}");
        self.stderr.trim_end()
    }
}

/// Runs `switchboard ARGS` with only the given `SWITCHBOARD_*` variables set.
async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .env_remove("SWITCHBOARD_SERVER")
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("switchboard {args:?} did not finish"))
        .expect("run switchboard");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `switchboard ARGS --server <s>`.
async fn cli(s: &Server, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--server", &s.base]);
    cli_env(&all, &[]).await
}

/// Fails unless the run succeeded.
fn ok(run: Run) -> Run {
    assert_eq!(run.code, 0, "{run:?}");
    run
}

/// The table's rows (after the header), split into cells at runs of blanks.
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// Fails unless every line of `table` puts each header's column at the same place:
/// the cells under a left-aligned header start where it starts.
fn assert_aligned(table: &str, headers: &[&str]) {
    let header = table.lines().next().expect("a header line");
    for h in headers {
        assert!(header.contains(h), "header lacks {h}: {table}");
    }
    let starts: Vec<usize> = headers
        .iter()
        .map(|h| header.find(h).expect("header"))
        .collect();
    for line in table.lines().skip(1) {
        for (h, &start) in headers.iter().zip(&starts) {
            let before = line
                .get(..start)
                .unwrap_or_else(|| panic!("short line {line:?}"));
            assert!(
                before.ends_with("   ") || start == 0,
                "column {h} is not aligned in {line:?}:\n{table}"
            );
            assert_ne!(
                line[start..].chars().next(),
                Some(' '),
                "column {h} is empty or misaligned in {line:?}:\n{table}"
            );
        }
    }
}

async fn register(s: &Server, service: &str, body: Value) -> Registered {
    s.register(service, body).await
}

#[tokio::test]
async fn services_and_instances_print_aligned_tables_and_json() {
    let s = Server::start().await;
    let a = register(
        &s,
        "default",
        json!({"address": "127.0.0.1:7001", "zone": "eu-1", "tags": ["v2"]}),
    )
    .await;
    let b = register(
        &s,
        "default",
        json!({"address": "127.0.0.1:7002", "weight": 2}),
    )
    .await;
    register(&s, "mqtt-eu", json!({"address": "127.0.0.1:7003"})).await;
    assert_eq!(s.heartbeat(&a, 120).await.0, 200);
    assert_eq!(s.heartbeat(&b, 40).await.0, 200);

    let run = ok(cli(&s, &["services"]).await);
    assert_aligned(&run.stdout, &["SERVICE", "SELF-PRESERVATION"]);
    let rows_ = rows(&run.stdout);
    let default = rows_
        .iter()
        .find(|r| r[0] == "default")
        .unwrap_or_else(|| panic!("no default row: {}", run.stdout));
    // SERVICE LIVE DRAINING EXPIRED CONNECTIONS SELF-PRESERVATION VERSION
    assert_eq!(
        &default[..6],
        ["default", "2", "0", "0", "160", "no"],
        "{}",
        run.stdout
    );
    assert!(rows_.iter().any(|r| r[0] == "mqtt-eu"), "{}", run.stdout);

    let run = ok(cli(&s, &["services", "--json"]).await);
    let answer = run.json();
    let names: Vec<&str> = answer["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(
        names.contains(&"default") && names.contains(&"mqtt-eu"),
        "{answer}"
    );
    assert!(
        run.stdout.contains("\n  "),
        "pretty-printed: {}",
        run.stdout
    );

    let run = ok(cli(&s, &["instances", "default"]).await);
    assert_aligned(
        &run.stdout,
        &["ID", "ADDRESS", "ZONE", "STATE", "TAGS", "REGISTERED"],
    );
    let rows_ = rows(&run.stdout);
    assert_eq!(rows_.len(), 2, "{}", run.stdout);
    let row_a = rows_.iter().find(|r| r[0] == a.id).expect("a's row");
    // ID ADDRESS ZONE STATE WEIGHT CONNECTIONS PENDING LOAD HEARTBEAT(n unit ago) TAGS
    assert_eq!(
        &row_a[1..6],
        ["127.0.0.1:7001", "eu-1", "up", "1", "120"],
        "{}",
        run.stdout
    );
    assert_eq!(row_a[10], "v2", "{}", run.stdout);
    let row_b = rows_.iter().find(|r| r[0] == b.id).expect("b's row");
    assert_eq!(
        &row_b[1..6],
        ["127.0.0.1:7002", "-", "up", "2", "40"],
        "{}",
        run.stdout
    );
    assert_eq!(row_b[7], "20.0", "load = 40 / 2: {}", run.stdout);

    let run = ok(cli(&s, &["instances", "default", "--json"]).await);
    let answer = run.json();
    assert_eq!(answer["service"], "default");
    assert!(
        run.stdout
            .starts_with("{\n  \"service\": \"default\",\n  \"instances\": [\n"),
        "the server's own field order, indented: {}",
        run.stdout
    );
    assert_eq!(
        answer["instances"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );

    // An unknown service is an empty list (SPEC: reads create nothing): the header.
    let run = ok(cli(&s, &["instances", "nosuch"]).await);
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
}

#[tokio::test]
async fn drain_with_and_without_a_pace_and_deregister() {
    let s = Server::start().await;
    let a = register(&s, "default", json!({"address": "127.0.0.1:7101"})).await;
    let b = register(&s, "default", json!({"address": "127.0.0.1:7102"})).await;
    let c = register(&s, "default", json!({"address": "127.0.0.1:7103"})).await;
    assert_eq!(s.heartbeat(&b, 50).await.0, 200);

    let run = ok(cli(&s, &["drain", "default", &a.id]).await);
    assert!(
        run.stdout
            .starts_with(&format!("drained {} (127.0.0.1:7101)", a.id)),
        "{run:?}"
    );
    assert!(run.stdout.contains("draining"), "{run:?}");
    assert_eq!(
        s.instance("default", &a.id).await.expect("a listed")["state"],
        "draining"
    );

    let run = ok(cli(
        &s,
        &[
            "drain",
            "default",
            &b.id,
            "--evacuate-per-sec",
            "10",
            "--json",
        ],
    )
    .await);
    let answer = run.json();
    assert_eq!(answer["id"], b.id.as_str(), "{answer}");
    assert_eq!(answer["state"], "draining", "{answer}");
    assert_eq!(
        s.instance("default", &b.id).await.expect("b listed")["state"],
        "draining"
    );
    // The pace reached the server: the next heartbeat is asked to shed.
    let (status, hb) = s.heartbeat(&b, 50).await;
    assert_eq!(status, 200);
    assert!(
        hb["shed"].as_u64().is_some_and(|n| n > 0),
        "evacuation asked: {hb}"
    );

    // Out of range: the server's 400, its code and message, exit 1.
    let run = cli(&s, &["drain", "default", &c.id, "--evacuate-per-sec", "0"]).await;
    let line = run.failed_with(1);
    assert!(
        line.contains("400") && line.contains("invalid_evacuate_per_sec"),
        "{line}"
    );
    assert_eq!(
        s.instance("default", &c.id).await.expect("c listed")["state"],
        "up"
    );

    let run = ok(cli(&s, &["deregister", "default", &a.id]).await);
    assert!(
        run.stdout.contains(&format!("deregistered {}", a.id)),
        "{run:?}"
    );
    assert!(s.instance("default", &a.id).await.is_none(), "a is gone");
    let run = ok(cli(&s, &["deregister", "default", &c.id, "--json"]).await);
    assert_eq!(run.json()["deregistered"], true);
    assert!(s.instance("default", &c.id).await.is_none(), "c is gone");

    // Unknown now: 404 with the server's code.
    for args in [
        vec!["deregister", "default", a.id.as_str()],
        vec!["drain", "default", a.id.as_str()],
    ] {
        let run = cli(&s, &args).await;
        let line = run.failed_with(1);
        assert!(
            line.contains("404") && line.contains("unknown_instance"),
            "{line}"
        );
    }
    // A bad service name: the server's 400.
    let run = cli(&s, &["instances", "Not A Name"]).await;
    let line = run.failed_with(1);
    assert!(
        line.contains("400") && line.contains("invalid_service"),
        "{line}"
    );
}

const ADMIN: &str = "[tokens]\nadmin = \"adm\"\n";

#[tokio::test]
async fn a_wrong_or_missing_token_is_a_one_line_401() {
    let s = Server::start_with(Options {
        config: Some(ADMIN.into()),
        ..Options::default()
    })
    .await;
    let a = register(&s, "default", json!({"address": "127.0.0.1:7201"})).await;
    for args in [
        vec!["services"],
        vec!["instances", "default"],
        vec!["drain", "default", a.id.as_str()],
        vec!["deregister", "default", a.id.as_str()],
    ] {
        for token in [None, Some("bad-t0ken")] {
            let mut all = args.clone();
            if let Some(t) = token {
                all.extend(["--token", t]);
            }
            let run = cli(&s, &all).await;
            let line = run.failed_with(1);
            assert!(
                line.contains("401") && line.contains("unauthorized"),
                "{all:?}: {line}"
            );
            assert!(
                !line.contains("bad-t0ken"),
                "the token is not echoed: {line}"
            );
        }
    }
    // Nothing changed.
    let listing = admin_get(&s, "/v1/services/default/instances").await;
    assert_eq!(listing["instances"][0]["state"], "up", "{listing}");

    // The right token, by flag and by environment.
    let run = ok(cli(&s, &["instances", "default", "--token", "adm"]).await);
    assert!(run.stdout.contains(&a.id), "{run:?}");
    let env = [
        ("SWITCHBOARD_ADMIN_TOKEN", "adm"),
        ("SWITCHBOARD_SERVER", s.base.as_str()),
    ];
    let run = ok(cli_env(&["drain", "default", &a.id], &env).await);
    assert!(run.stdout.contains("draining"), "{run:?}");
    let listing = admin_get(&s, "/v1/services/default/instances").await;
    assert_eq!(listing["instances"][0]["state"], "draining", "{listing}");
    // A flag wins over the environment.
    let run = cli_env(&["services", "--token", "wrong"], &env).await;
    assert!(run.failed_with(1).contains("401"), "{run:?}");
    ok(cli_env(&["deregister", "default", &a.id], &env).await);
    let listing = admin_get(&s, "/v1/services/default/instances").await;
    assert_eq!(listing["instances"], json!([]), "{listing}");
}

async fn admin_get(s: &Server, path: &str) -> Value {
    let resp = s
        .client
        .get(s.url(path))
        .bearer_auth("adm")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("JSON")
}

#[tokio::test]
async fn the_server_url_comes_from_the_environment() {
    let s = Server::start().await;
    let a = register(&s, "default", json!({"address": "127.0.0.1:7301"})).await;
    let env = [("SWITCHBOARD_SERVER", s.base.as_str())];
    let run = ok(cli_env(&["instances", "default"], &env).await);
    assert!(run.stdout.contains(&a.id), "{run:?}");
    // Without the scheme, http:// is meant.
    let bare = s.base.trim_start_matches("http://");
    let run = ok(cli_env(&["services", "--server", bare], &[]).await);
    assert!(run.stdout.contains("default"), "{run:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_and_exits_3() {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["services"],
        vec!["instances", "default"],
        vec!["drain", "default", "x"],
        vec!["deregister", "default", "x"],
    ] {
        let mut all = args.clone();
        all.extend(["--server", &url]);
        let run = cli_env(&all, &[]).await;
        let line = run.failed_with(3);
        assert!(
            line.contains(&url) && line.contains("cannot reach"),
            "{line}"
        );
    }
    // The same through the environment.
    let run = cli_env(&["services"], &[("SWITCHBOARD_SERVER", &url)]).await;
    assert!(run.failed_with(3).contains(&url), "{run:?}");
}

#[tokio::test]
async fn a_bad_server_url_is_a_usage_error() {
    for bad in ["ftp://127.0.0.1:1", "http://", "http://127.0.0.1:99999"] {
        let run = cli_env(&["services", "--server", bad], &[]).await;
        let line = run.failed_with(2);
        assert!(line.contains("--server") && line.contains(bad), "{line}");
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_exits_3() {
    // Accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the CLI makes one request.
        for _ in 0..4 {
            match listener.accept().await {
                Ok((conn, _)) => held.push(conn),
                Err(_) => break,
            }
        }
    });
    let started = std::time::Instant::now();
    let run = cli_env(&["services", "--server", &url], &[]).await;
    let line = run.failed_with(3);
    assert!(
        line.contains(&url) && line.contains("did not answer"),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "bounded by the 10 s timeout"
    );
    hold.abort();
}

#[tokio::test]
async fn a_foreign_answer_is_named() {
    // Something that speaks HTTP but is not Switchboard: 404 with an HTML page.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let serve = tokio::spawn(async move {
        if let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let body = "<html>\n<h1>Not Found</h1>\n</html>";
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let run = cli_env(&["services", "--server", &url], &[]).await;
    let line = run.failed_with(1);
    assert!(
        line.contains(&url) && line.contains("404") && line.contains("Switchboard"),
        "{line}"
    );
    serve.abort();
}

#[tokio::test]
async fn help_describes_every_command_flag_and_exit_code() {
    let top = ok(cli_env(&["--help"], &[]).await).stdout;
    for word in ["services", "instances", "drain", "deregister", "Exit codes"] {
        assert!(top.contains(word), "--help lacks {word}:\n{top}");
    }
    for (command, flags) in [
        ("services", vec!["--server", "--token", "--json"]),
        (
            "instances",
            vec!["--server", "--token", "--json", "<SERVICE>"],
        ),
        (
            "drain",
            vec![
                "--server",
                "--token",
                "--json",
                "--evacuate-per-sec",
                "<ID>",
            ],
        ),
        ("deregister", vec!["--server", "--token", "--json", "<ID>"]),
    ] {
        let help = ok(cli_env(
            &[command, "--help"],
            &[("SWITCHBOARD_ADMIN_TOKEN", "s3cret")],
        )
        .await)
        .stdout;
        for flag in flags.iter().chain(&[
            "SWITCHBOARD_SERVER",
            "SWITCHBOARD_ADMIN_TOKEN",
            "http://127.0.0.1:8080",
            "Exit codes",
        ]) {
            assert!(
                help.contains(flag),
                "{command} --help lacks {flag}:\n{help}"
            );
        }
        assert!(
            !help.contains("s3cret"),
            "{command} --help shows the token:\n{help}"
        );
    }
    // A missing argument is clap's usage error.
    assert_eq!(cli_env(&["drain", "default"], &[]).await.code, 2);
}
