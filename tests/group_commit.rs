//! Group commit at the store: one batch of writes in one transaction, on SQLite and on
//! PostgreSQL (a database of its own): per-write answers in order, the same address
//! twice in one batch, and a batch with one failing statement stores none of it.

mod common;

use std::sync::Arc;

use common::pg::TestDb;
use switchboard::store::group::{Done, GroupCommit, Write};
use switchboard::store::{self, InstanceRecord, Store, StoreError};

fn record(id: &str, address: &str, lease_hash: &str) -> InstanceRecord {
    InstanceRecord {
        id: id.to_owned(),
        service: "fleet".to_owned(),
        address: address.to_owned(),
        weight: 1,
        max_connections: Some(10),
        zone: None,
        tags_json: "[]".to_owned(),
        metadata_json: "{}".to_owned(),
        ttl_secs: 30,
        lease_hash: lease_hash.to_owned(),
        draining: false,
        evacuate_per_sec: None,
        connections: 0,
        registered_at_ms: 1_000,
        last_heartbeat_ms: 1_000,
    }
}

fn upserted(done: &Done) -> (&str, bool) {
    match done {
        Done::Upserted(u) => (u.id.as_str(), u.created),
        other => panic!("not an upsert's answer: {other:?}"),
    }
}

async fn stored(store: &dyn Store) -> Vec<(String, String, String, bool)> {
    let mut rows: Vec<_> = store
        .load_all()
        .await
        .expect("load")
        .into_iter()
        .map(|r| (r.id, r.address, r.lease_hash, r.draining))
        .collect();
    rows.sort();
    rows
}

/// The same checks on any backend.
async fn one_batch_in_order(store: Arc<dyn Store>) {
    let writes = vec![
        Write::Upsert(record("a1", "10.0.0.1:1", "h1")),
        Write::Upsert(record("b", "10.0.0.1:2", "hb")),
        // The same address again in the same batch: keeps a1's id, not new, its lease.
        Write::Upsert(record("a2", "10.0.0.1:1", "h2")),
        Write::Drain {
            service: "fleet".to_owned(),
            id: "b".to_owned(),
            evacuate_per_sec: Some(5),
        },
        Write::Drain {
            service: "fleet".to_owned(),
            id: "nobody".to_owned(),
            evacuate_per_sec: None,
        },
        // And a third time, after other kinds of write.
        Write::Upsert(record("a3", "10.0.0.1:1", "h3")),
        Write::Upsert(record("c", "10.0.0.1:3", "hc")),
        Write::Delete {
            service: "fleet".to_owned(),
            ids: vec!["c".to_owned(), "nobody".to_owned()],
        },
    ];
    let dones = store.commit(&writes).await.expect("committed");
    assert_eq!(dones.len(), writes.len());
    assert_eq!(upserted(&dones[0]), ("a1", true));
    assert_eq!(upserted(&dones[1]), ("b", true));
    assert_eq!(upserted(&dones[2]), ("a1", false));
    assert_eq!(dones[3], Done::Drained(true));
    assert_eq!(dones[4], Done::Drained(false));
    assert_eq!(upserted(&dones[5]), ("a1", false));
    assert_eq!(upserted(&dones[6]), ("c", true));
    assert_eq!(dones[7], Done::Deleted(1));
    assert_eq!(
        stored(&*store).await,
        vec![
            ("a1".into(), "10.0.0.1:1".into(), "h3".into(), false),
            ("b".into(), "10.0.0.1:2".into(), "hb".into(), true),
        ]
    );

    // One failing statement (a second row under the id a1 for another address breaks
    // the primary key) fails the whole batch: none of its writes is stored.
    let failing = vec![
        Write::Upsert(record("d", "10.0.0.1:4", "hd")),
        Write::Upsert(record("a1", "10.0.0.1:5", "hx")),
        Write::Drain {
            service: "fleet".to_owned(),
            id: "a1".to_owned(),
            evacuate_per_sec: None,
        },
    ];
    assert!(store.commit(&failing).await.is_err());
    assert_eq!(stored(&*store).await.len(), 2, "nothing of a failed batch");

    // Through the writer, concurrently: every caller of the failing batch hears the
    // error, none of the hooks run; the good writes around it are answered.
    let writer = GroupCommit::start(Arc::clone(&store));
    let ran = Arc::new(std::sync::Mutex::new(0));
    let mut pending = Vec::new();
    for (i, w) in failing.into_iter().enumerate() {
        let ran = Arc::clone(&ran);
        let then = Box::new(move |_: &Done| *ran.lock().unwrap() += 1);
        pending.push((i, writer.submit(w, Some(then)).await.expect("queued")));
    }
    // Queued back to back on a current-thread runtime: one batch.
    for (i, p) in pending {
        match p.done().await {
            Err(StoreError::Batch(_)) => {}
            other => panic!("write {i} of a failing batch answered {other:?}"),
        }
    }
    assert_eq!(*ran.lock().unwrap(), 0, "no hook of a failed batch runs");
    let ok = writer
        .submit(Write::Upsert(record("e", "10.0.0.1:6", "he")), None)
        .await
        .expect("queued")
        .done()
        .await
        .expect("the next batch commits");
    assert_eq!(upserted(&ok), ("e", true));
    assert_eq!(stored(&*store).await.len(), 3);
    store.close().await;
}

#[tokio::test]
async fn sqlite_commits_a_batch_in_order_and_fails_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("batch.db").display());
    one_batch_in_order(store::open(&url).await.expect("open").store).await;
}

#[tokio::test]
async fn postgres_commits_a_batch_in_order_and_fails_it_whole() {
    let db = TestDb::create().await;
    one_batch_in_order(store::open(&db.url()).await.expect("open").store).await;
}

/// A batch of more distinct addresses than one upsert statement carries (SQLite's
/// holds 64 rows, padded with NULL rows when fewer): every write answered in order,
/// each stored once with every field, and all of them replaced (ids kept) by the next.
async fn a_large_round(store: Arc<dyn Store>) {
    let n = 150;
    let first: Vec<Write> = (0..n)
        .map(|i| {
            let mut r = record(&format!("id{i}"), &format!("10.0.1.{i}:7"), "h1");
            r.zone = (i % 2 == 0).then(|| format!("z{i}"));
            r.max_connections = (i % 3 == 0).then_some(i);
            Write::Upsert(r)
        })
        .collect();
    let dones = store.commit(&first).await.expect("commits");
    assert_eq!(dones.len(), n as usize);
    for (i, done) in dones.iter().enumerate() {
        assert_eq!(upserted(done), (format!("id{i}").as_str(), true));
    }
    // PostgreSQL dates rows by its own clock: times are left out of the comparison.
    let undated = |mut r: InstanceRecord| {
        (r.registered_at_ms, r.last_heartbeat_ms) = (0, 0);
        r
    };
    let mut rows: Vec<InstanceRecord> = store
        .load_all()
        .await
        .expect("load")
        .into_iter()
        .map(undated)
        .collect();
    rows.sort_by_key(|r| r.id[2..].parse::<u64>().expect("an index"));
    let wanted: Vec<InstanceRecord> = first
        .iter()
        .map(|w| match w {
            Write::Upsert(r) => undated(r.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        rows == wanted,
        "every field of every row stored, nothing else"
    );
    let again: Vec<Write> = (0..n)
        .map(|i| Write::Upsert(record(&format!("new{i}"), &format!("10.0.1.{i}:7"), "h2")))
        .collect();
    let dones = store.commit(&again).await.expect("commits");
    for (i, done) in dones.iter().enumerate() {
        assert_eq!(upserted(done), (format!("id{i}").as_str(), false));
    }
    let rows = stored(&*store).await;
    assert_eq!(rows.len(), n as usize);
    assert!(rows.iter().all(|(_, _, lease, _)| lease == "h2"));
    store.close().await;
}

#[tokio::test]
async fn sqlite_commits_a_round_larger_than_one_statement() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("large.db").display());
    a_large_round(store::open(&url).await.expect("open").store).await;
}

#[tokio::test]
async fn postgres_commits_a_round_larger_than_one_statement() {
    let db = TestDb::create().await;
    a_large_round(store::open(&db.url()).await.expect("open").store).await;
}
