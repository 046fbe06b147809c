//! The heartbeat sync at the PostgreSQL store, two stores (two nodes) on a database of
//! their own: a beat one node writes reaches the other's next read and is not sent
//! back to the node that wrote it, and an older beat written after a newer one
//! leaves the newer one (and its writer's stamp) in place.

mod common;

use common::pg::TestDb;
use switchboard::store::group::Write;
use switchboard::store::postgres::PgStore;
use switchboard::store::{BeatRecord, ClusterStore, InstanceRecord, Store};

fn record(id: &str, address: &str) -> InstanceRecord {
    InstanceRecord {
        id: id.to_owned(),
        service: "fleet".to_owned(),
        address: address.to_owned(),
        weight: 1,
        max_connections: None,
        zone: None,
        tags_json: "[]".to_owned(),
        metadata_json: "{}".to_owned(),
        ttl_secs: 30,
        lease_hash: "00".repeat(32),
        draining: false,
        evacuate_per_sec: None,
        connections: 0,
        registered_at_ms: 1_000,
        last_heartbeat_ms: 1_000,
    }
}

fn beat(id: &str, connections: u64, age_ms: u64) -> BeatRecord {
    BeatRecord {
        id: id.to_owned(),
        connections,
        at_ms: 0,
        age_ms,
    }
}

/// (id, connections) of a read, sorted.
fn seen(batch: &switchboard::store::BeatBatch) -> Vec<(String, u64)> {
    let mut v: Vec<_> = batch
        .beats
        .iter()
        .map(|b| (b.id.clone(), b.connections))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_beat_reaches_the_other_node_and_not_its_writer() {
    let db = TestDb::create().await;
    let a = PgStore::open(&db.url()).await.expect("open a");
    let b = PgStore::open(&db.url()).await.expect("open b");
    let writes = vec![
        Write::Upsert(record("i1", "10.0.0.1:1")),
        Write::Upsert(record("i2", "10.0.0.2:1")),
    ];
    a.commit(&writes).await.expect("register");
    // Both start from a horizon after the registrations.
    let ha = a.beats(None).await.expect("read a").horizon;
    let hb = b.beats(None).await.expect("read b").horizon;

    a.save_beats(&[beat("i1", 7, 0)]).await.expect("a writes");
    let at_b = b.beats(Some(hb)).await.expect("b reads");
    assert_eq!(seen(&at_b), vec![("i1".to_owned(), 7)]);
    let at_a = a.beats(Some(ha)).await.expect("a reads");
    assert!(seen(&at_a).is_empty(), "a read its own beat back: {at_a:?}");

    // B writes a newer beat of i1; A then writes an older one (it arrived at A
    // earlier but was batched later). The newer one stays, and A still reads it.
    b.save_beats(&[beat("i1", 9, 0)]).await.expect("b writes");
    a.save_beats(&[beat("i1", 8, 60_000)])
        .await
        .expect("a writes an older beat");
    let at_a = a.beats(Some(at_a.horizon)).await.expect("a reads");
    assert_eq!(seen(&at_a), vec![("i1".to_owned(), 9)]);
    let at_b = b.beats(Some(at_b.horizon)).await.expect("b reads");
    assert!(seen(&at_b).is_empty(), "b read its own beat back: {at_b:?}");
    a.close().await;
    b.close().await;
}
