//! `GET /openapi.json`: the document lists every route the router serves (and each
//! documented operation is really served), validates as OpenAPI 3, and schemathesis
//! finds no 5xx and no answer that contradicts it.
//!
//! The validator and schemathesis come from PyPI (`.ci/run` installs them). Where
//! they are missing the Python parts fail under CI and are skipped, saying so,
//! elsewhere.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::process::Server;
use serde_json::Value;

/// Every route of SPEC section 2 (and the operations endpoints), as `METHOD path`.
const ROUTES: &[&str] = &[
    "GET /",
    "GET /servers",
    "GET /v1/services",
    "GET /v1/services/{service}/instances",
    "POST /v1/services/{service}/instances",
    "DELETE /v1/services/{service}/instances/{id}",
    "PUT /v1/services/{service}/instances/{id}/heartbeat",
    "POST /v1/services/{service}/instances/{id}/drain",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.json",
    "GET /v1/forwarders",
    "GET /v1/history",
    "GET /v1/sd/prometheus",
];

async fn document(s: &Server) -> Value {
    let resp = switchboard::tls::client::reqwest_client()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("the document is JSON")
}

fn operations(doc: &Value) -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

/// A tool from PyPI, or None (with a message) where it is missing outside CI.
fn python_tool(probe: &[&str], what: &str) -> Option<()> {
    let found = std::process::Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing; .ci/run installs it"
    );
    eprintln!("SKIPPED: {what} is not installed (pip install it to run this part)");
    None
}

#[tokio::test]
async fn the_document_covers_every_route_and_each_is_served() {
    let s = Server::start();
    let doc = document(&s).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    let expected: BTreeSet<String> = ROUTES.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(operations(&doc), expected);
    // Each documented operation is routed: no `not_found` or `method_not_allowed`.
    let client = switchboard::tls::client::reqwest_client();
    for op in operations(&doc) {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path.replace("{service}", "default").replace("{id}", "nope");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client.request(method, s.url(&path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !matches!(code, "not_found" | "method_not_allowed"),
            "{op} is documented but not served: {status} {body}"
        );
    }
    // Every answer's error shape is documented once, as a component.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test]
async fn the_document_validates_as_openapi_3() {
    let probe = ["python3", "-c", "import openapi_spec_validator"];
    if python_tool(&probe, "openapi-spec-validator").is_none() {
        return;
    }
    let s = Server::start();
    let doc = document(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg("import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "invalid OpenAPI document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_against_the_schema() {
    if python_tool(&["st", "--version"], "schemathesis").is_none() {
        return;
    }
    let s = Server::start();
    let run = tokio::process::Command::new("st")
        .arg("run")
        .arg(s.url("/openapi.json"))
        // What the answers may not do: fail, or say what the document does not.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--workers",
            "2",
            "--seed",
            "1",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finished within 5 minutes")
        .expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{}",
        stdout.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
}
