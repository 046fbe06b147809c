//! A real full disk under the SQLite file (a small tmpfs mounted by the test, as
//! root): registrations the store cannot commit answer 503 and change nothing, reads
//! go on, writes return once space is freed, and after kill -9 exactly the
//! acknowledged registrations are there. Skips, saying so, where mounting is refused.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::Server;
use common::{Options, eventually};
use serde_json::{Value, json};

/// A tmpfs mounted for the test's lifetime, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `"3m"`), or None where that is not allowed.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false);
        mounted.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until the file system refuses more; returns the bytes.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler file");
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: a 3 MiB disk takes at most a few dozen blocks.
    for _ in 0..100_000 {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // The last partial pages: fill byte by byte-sized writes until refused.
    for _ in 0..65_536 {
        if !matches!(file.write(&[0u8; 1]), Ok(1)) {
            break;
        }
        written += 1;
    }
    let _ = file.flush();
    written
}

async fn try_register(s: &Server, address: &str) -> (u16, Value) {
    let body = json!({ "address": address, "ttl_secs": 300 });
    s.post_raw("/v1/services/default/instances", &body.to_string())
        .await
}

async fn listed_addresses(s: &Server) -> BTreeSet<String> {
    let (status, body) = s.get("/v1/services/default/instances").await;
    assert_eq!(status, 200, "{body}");
    body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["address"].as_str().expect("address").to_owned())
        .collect()
}

#[tokio::test]
async fn a_full_disk_refuses_registrations_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); full-disk test not run");
        return;
    };
    let db = disk.path.join("switchboard.db");
    let mut s = Server::start_with(Options::db(&db));
    let mut acknowledged = BTreeSet::new();
    let mut first = None;
    for port in 1..=50u16 {
        let address = format!("10.0.0.1:{port}");
        let (status, body) = try_register(&s, &address).await;
        assert_eq!(status, 201, "{body}");
        first.get_or_insert(common::Registered::from_answer(
            "default",
            status,
            body.clone(),
        ));
        acknowledged.insert(address);
    }
    let first = first.expect("registered");

    let filler = disk.path.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler wrote nothing");
    let mut refused = 0;
    for port in 1..=200u16 {
        let address = format!("10.0.1.1:{port}");
        let (status, body) = try_register(&s, &address).await;
        match status {
            201 => {
                acknowledged.insert(address);
            }
            503 => {
                assert_eq!(common::code(&body), "store_unavailable", "{body}");
                refused += 1;
            }
            other => panic!("register on a full disk answered {other}: {body}"),
        }
    }
    eprintln!(
        "full disk ({filled} filler bytes): {refused} of 200 registrations refused, {} acknowledged",
        200 - refused
    );
    assert!(refused > 0, "a full disk refused no registration");
    // Nothing refused shows up anywhere, and reads keep being served.
    assert_eq!(listed_addresses(&s).await, acknowledged);
    let (status, _) = s.get("/servers?limit=3").await;
    assert_eq!(status, 200, "/servers answers while the disk is full");
    let (status, body) = s.get("/readyz").await;
    assert_eq!(
        status, 503,
        "not ready while the store cannot write: {body}"
    );
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    // A heartbeat is answered from memory; its batch cannot be written and is kept.
    assert_eq!(s.heartbeat(&first, 42).await.0, 200);
    s.wait_log("heartbeat batch not persisted; will retry");

    std::fs::remove_file(&filler).expect("free the disk");
    eventually("/readyz ready once space is freed", || async {
        (s.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    for port in 1..=20u16 {
        let address = format!("10.0.2.1:{port}");
        let (status, body) = try_register(&s, &address).await;
        assert_eq!(status, 201, "after freeing space: {body}");
        acknowledged.insert(address);
    }

    s.wait_log("heartbeat batches persisted again");
    s.kill();
    let s = Server::start_with(Options::db(&db));
    let stored = s
        .instance("default", &first.id)
        .await
        .expect("first survived");
    assert_eq!(
        stored["connections"], 42,
        "the heartbeat kept through the full disk"
    );
    assert_eq!(
        listed_addresses(&s).await,
        acknowledged,
        "after kill -9, exactly the acknowledged registrations are stored"
    );
    drop(s);
}

#[tokio::test]
async fn concurrent_registrations_on_a_full_disk_are_refused_together_and_none_is_stored() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); full-disk test not run");
        return;
    };
    let db = disk.path.join("switchboard.db");
    let s = Server::start_with(Options::db(&db));
    let mut acknowledged = BTreeSet::new();
    for port in 1..=20u16 {
        let address = format!("10.0.0.1:{port}");
        assert_eq!(try_register(&s, &address).await.0, 201);
        acknowledged.insert(address);
    }
    let filler = disk.path.join("filler");
    assert!(fill(&filler) > 0, "the filler wrote nothing");

    // 100 clients at once: their writes share batches, and a batch that cannot commit
    // refuses every write in it. Each answer is 201 (stored) or 503 (not stored).
    let mut tasks = Vec::new();
    for port in 1..=100u16 {
        let url = s.url("/v1/services/default/instances");
        tasks.push(tokio::spawn(async move {
            let address = format!("10.0.3.1:{port}");
            let body = json!({ "address": address, "ttl_secs": 300 });
            let resp = switchboard::tls::client::reqwest_client()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("answered");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            (address, status, body)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let (address, status, body) = t.await.unwrap();
        match status {
            201 => {
                acknowledged.insert(address);
            }
            503 => {
                assert_eq!(common::code(&body), "store_unavailable", "{body}");
                refused += 1;
            }
            other => panic!("register on a full disk answered {other}: {body}"),
        }
    }
    eprintln!("full disk, 100 concurrent registrations: {refused} refused");
    assert!(refused > 0, "a full disk refused no registration");
    assert_eq!(
        listed_addresses(&s).await,
        acknowledged,
        "memory: none refused"
    );

    std::fs::remove_file(&filler).expect("free the disk");
    eventually("/readyz ready once space is freed", || async {
        (s.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    s.kill();
    let s = Server::start_with(Options::db(&db));
    assert_eq!(
        listed_addresses(&s).await,
        acknowledged,
        "after kill -9, exactly the acknowledged registrations are stored"
    );
}
