//! `sqlite::memory:` under cancelled writes: a write whose caller gave up (a store
//! timeout answers 503 and drops it) must not take the in-memory database with it.
//! SQLite keeps an in-memory database only while a connection to it is open, and the
//! in-memory store's pool has exactly one, which sqlx closes when a write on it is cut
//! off midway: before the store kept a second connection open, a deadline passing mid
//! write replaced the database with an empty one ("no such table: instances" on every
//! later write; 6 of 8 runs of the deadline test failed, 0 of 10 since). Dropped
//! writes, deadlines passing mid write, and a server's heartbeat flushes overtaken by
//! clock jumps.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

/// Polls `fut` a few times, then drops it: a write cancelled while in flight.
fn cancel_midway<F: Future>(fut: F, polls: usize) -> bool {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if fut.as_mut().poll(&mut cx).is_ready() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn an_in_memory_store_keeps_its_tables_and_rows_after_cancelled_writes() {
    let opened = switchboard::store::open("sqlite::memory:")
        .await
        .expect("open sqlite::memory:");
    let store = opened.store;
    store.probe_write().await.expect("a first write");
    let mut cancelled = 0;
    for round in 0..200 {
        if cancel_midway(store.probe_write(), 1 + round % 4) {
            cancelled += 1;
        }
        // Let the pool take back (or close) the connection the dropped write held.
        tokio::task::yield_now().await;
        if let Err(err) = store.load_all().await {
            panic!("after {cancelled} cancelled writes (round {round}) the store fails: {err}");
        }
    }
    assert!(cancelled > 0, "no write was cancelled midway");
    store.probe_write().await.expect("a write after them");
}

#[tokio::test]
async fn an_in_memory_store_survives_its_deadlines_passing_mid_write() {
    let opened = switchboard::store::open("sqlite::memory:")
        .await
        .expect("open sqlite::memory:");
    let store = opened.store;
    store.probe_write().await.expect("a first write");
    for round in 0..500 {
        let writer = std::sync::Arc::clone(&store);
        let write =
            tokio::spawn(
                async move { switchboard::store::health::timed(writer.probe_write()).await },
            );
        tokio::task::yield_now().await;
        // The store's clock jumps past every deadline while the write is in flight.
        tokio::time::pause();
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        tokio::time::resume();
        let _ = write.await;
        if let Err(err) = store.load_all().await {
            panic!("round {round}: the store fails after a deadline passed: {err}");
        }
    }
}

#[tokio::test]
async fn a_server_on_memory_keeps_registering_after_clock_jumps_over_its_flushes() {
    let s = common::Server::start().await;
    let mut registered = Vec::new();
    for n in 0..20 {
        registered.push(
            s.register(
                "mem",
                serde_json::json!({"address": format!("10.9.0.{n}:7000"), "ttl_secs": 300}),
            )
            .await,
        );
    }
    for round in 0..40u64 {
        for r in &registered {
            s.heartbeat(r, round).await;
        }
        // The flush of those beats may be in flight: jump past its 5 s deadline.
        common::jump(std::time::Duration::from_secs(6)).await;
        let (status, body) = s
            .post_raw(
                "/v1/services/mem/instances",
                &format!(r#"{{"address": "10.9.1.{round}:7000", "ttl_secs": 300}}"#),
            )
            .await;
        assert!(
            status == 201 || status == 200,
            "round {round}: register answered {status}: {body}"
        );
    }
}
