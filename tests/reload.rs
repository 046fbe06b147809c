//! `SIGHUP` (SPEC section 4): the config file is re-read and applied without
//! dropping a relayed connection or a registration; a file that fails validation
//! changes nothing. A real process: the signal is what is tested.

mod common;

use std::path::Path;

use common::process::Server;
use common::{Echo, Options, PATIENCE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(forwards: &[&str], statics: &[String]) -> String {
    let mut text = String::new();
    for service in forwards {
        text.push_str(&format!(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"{service}\"\n"
        ));
    }
    for address in statics {
        text.push_str(&format!(
            "[[static]]\nservice = \"default\"\naddress = \"{address}\"\n"
        ));
    }
    text
}

fn hup(s: &Server) {
    s.hup();
}

/// Each connection still echoes its own bytes.
async fn all_echo(conns: &mut [TcpStream], round: u8) {
    for (i, conn) in conns.iter_mut().enumerate() {
        let msg = [round, (i % 256) as u8, b'!'];
        conn.write_all(&msg).await.expect("write");
        let mut back = [0u8; 3];
        tokio::time::timeout(PATIENCE, conn.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg, "connection {i} in round {round}");
    }
}

fn static_addresses(listing: &serde_json::Value) -> Vec<String> {
    let mut found: Vec<String> = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["origin"] == "static")
        .map(|i| i["address"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    found
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

// Multi-threaded: the echo backends run on the test's runtime, and must go on
// answering while the test thread blocks waiting for the process's log and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_listeners_and_statics_while_relayed_connections_keep_echoing() {
    let registered = Echo::start().await;
    let first_static = Echo::start().await;
    let second_static = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    write(
        &path,
        &config(&["default", "other"], &[first_static.addr.to_string()]),
    );
    let mut s = Server::start_with(Options {
        extra: vec!["--config".into(), path.display().to_string()],
        forwards: 2,
        ..Options::default()
    });
    let (kept, removed) = (s.forward_addrs[0], s.forward_addrs[1]);
    s.register_addr("default", &registered.addr.to_string())
        .await;
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(TcpStream::connect(kept).await.unwrap());
    }
    all_echo(&mut conns, 1).await;

    // Listener "other" goes, "third" comes; the static instance is swapped.
    write(
        &path,
        &config(&["default", "third"], &[second_static.addr.to_string()]),
    );
    hup(&s);
    s.wait_log("configuration reloaded");
    let line = s.wait_log_nth("forward listening on ", 2);
    let added: std::net::SocketAddr = line
        .split("forward listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the new listener's address");
    all_echo(&mut conns, 2).await;
    assert!(
        TcpStream::connect(removed).await.is_err(),
        "the removed listener stopped accepting"
    );
    s.register_addr("third", &registered.addr.to_string()).await;
    let mut through_third = TcpStream::connect(added).await.unwrap();
    all_echo(std::slice::from_mut(&mut through_third), 3).await;
    let want = vec![second_static.addr.to_string()];
    eventually("the static instance swapped", || async {
        let (_, listing) = s.get("/v1/services/default/instances").await;
        (static_addresses(&listing) == want).then_some(())
    })
    .await;
    let (_, listing) = s.get("/v1/services/default/instances").await;
    assert!(
        listing["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["address"] == registered.addr.to_string().as_str()),
        "the registration is untouched"
    );

    // A broken file changes nothing.
    write(&path, "[[forward]]\nlisten = \"nowhere\"\n");
    hup(&s);
    s.wait_log("reload refused");
    all_echo(&mut conns, 4).await;
    all_echo(std::slice::from_mut(&mut through_third), 5).await;
    let (_, after) = s.get("/v1/services/default/instances").await;
    assert_eq!(static_addresses(&after), want);
    assert!(TcpStream::connect(kept).await.is_ok(), "still accepting");

    drop(conns);
    drop(through_third);
    assert_eq!(s.terminate(), 0, "exits cleanly after the reloads");
    registered.stop();
    first_static.stop();
    second_static.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_tokens_and_rebalancing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    write(&path, "[tokens]\nadmin = \"old\"\n");
    let mut s = Server::start_with(Options {
        extra: vec!["--config".into(), path.display().to_string()],
        ..Options::default()
    });
    let (client, url) = (s.client.clone(), s.url("/v1/services"));
    let status = |token: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("old").await, 200);
    assert_eq!(status("new").await, 401);
    write(
        &path,
        "[tokens]\nadmin = \"new\"\n[rebalance]\nreconnect_jitter_ms = 1234\n",
    );
    hup(&s);
    s.wait_log("configuration reloaded");
    assert_eq!(status("old").await, 401);
    assert_eq!(status("new").await, 200);
    let (_, body) = s.get("/servers").await;
    assert_eq!(body["reconnect_jitter_ms"], 1234);
    assert_eq!(s.terminate(), 0);
}
