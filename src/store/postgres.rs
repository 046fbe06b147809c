//! The PostgreSQL store of cluster mode: several registry nodes share it.
//!
//! Owns all PostgreSQL SQL. Times that decide liveness come from the database clock
//! (`now()`), never from a node's. Writes notify the other nodes (`NOTIFY
//! switchboard`); a node syncs by transaction-id horizon (see the migration), with a
//! periodic full read as the safety net; heartbeats have a horizon of their own
//! (`beat_txid`, migration 0004), so that writing them touches no index. One node at a time holds the advisory lock
//! that makes it the one removing expired instances.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;

use super::group::{self, Done, Write};
use super::row::{record_from_row, to_i64, to_u64};
use super::{
    BeatBatch, BeatRecord, ClusterStore, InstanceRecord, Store, StoreError, SyncBatch, SyncedBeat,
    SyncedRow,
};
use crate::locks::lock;

/// How long a request waits for a pooled connection before failing with 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// The notification channel.
const CHANNEL: &str = "switchboard";
/// Notifications already received that one wake-up absorbs at most.
const MAX_COALESCED: usize = 100_000;
/// Own heartbeat batches remembered at most (four a second; the horizon passes them
/// within a second unless a transaction stays open that long).
const MAX_OWN_BEATS: usize = 256;
/// Advisory lock key of the removal leader ("swbd" in ASCII).
const LEADER_LOCK: i64 = 0x7377_6264;

/// Columns of an instance row, with times as Unix milliseconds and the heartbeat's
/// age by the database clock.
const COLUMNS: &str = "id, service, address, weight::bigint AS weight, max_connections, zone, \
     tags, metadata, ttl_secs::bigint AS ttl_secs, lease_hash, draining, \
     evacuate_per_sec::bigint AS evacuate_per_sec, connections, deleted, \
     (EXTRACT(EPOCH FROM registered_at) * 1000)::bigint AS registered_at_ms, \
     (EXTRACT(EPOCH FROM last_heartbeat) * 1000)::bigint AS last_heartbeat_ms, \
     GREATEST(0, EXTRACT(EPOCH FROM (now() - last_heartbeat)) * 1000)::bigint AS age_ms";

/// A PostgreSQL-backed [`Store`] and [`ClusterStore`].
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    listener: Mutex<Option<PgListener>>,
    /// The connection holding the leader lock, while this node leads. A std mutex:
    /// it is only ever held to take or put the connection, never across a call.
    leader: std::sync::Mutex<Option<PgConnection>>,
    /// Transaction ids of this node's heartbeat batches not yet behind the heartbeat
    /// horizon (at most [`MAX_OWN_BEATS`]).
    own_beats: std::sync::Mutex<Vec<u64>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn synced_from_row(row: &PgRow) -> Result<SyncedRow, StoreError> {
    Ok(SyncedRow {
        record: record_from_row(row)?,
        age_ms: to_u64(row.try_get("age_ms")?),
        deleted: row.try_get("deleted")?,
    })
}

impl PgStore {
    /// Connects to `url` and migrates the database.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot connect or migrate.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        // Several nodes may start at once: the migrator takes its own advisory lock.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            pool,
            options,
            listener: Mutex::new(None),
            leader: std::sync::Mutex::new(None),
            own_beats: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A read-only transaction on one snapshot, and that snapshot's oldest running
    /// transaction id: the horizon of the next read. Rows and horizon come from the
    /// same snapshot, so nothing falls between two reads.
    async fn snapshot(&self) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let next: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *tx)
                .await?;
        Ok((tx, next))
    }

    async fn notify(&self, conn: &mut PgConnection, service: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(service)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn commit(&self, writes: &[Write]) -> Result<Vec<Done>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let dones = group::run_in_order(&mut *tx, writes, &Statements).await?;
        // One notification per service the batch changed: the other nodes sync once
        // for all of them.
        let mut services: Vec<&str> = writes
            .iter()
            .map(|w| match w {
                Write::Upsert(r) => r.service.as_str(),
                Write::Drain { service, .. } | Write::Delete { service, .. } => service,
            })
            .collect();
        services.sort_unstable();
        services.dedup();
        for service in services {
            self.notify(&mut tx, service).await?;
        }
        // The acknowledgements wait for the commit: an error there means nothing
        // stored (a dropped transaction rolls back).
        tx.commit().await?;
        Ok(dones)
    }

    async fn save_beats(&self, beats: &[BeatRecord]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = beats.iter().map(|b| b.id.as_str()).collect();
        let conns: Vec<i64> = beats.iter().map(|b| to_i64(b.connections)).collect();
        let ages: Vec<i64> = beats.iter().map(|b| to_i64(b.age_ms)).collect();
        // One statement per batch. Heartbeats of one instance may reach several nodes:
        // the newest (by database time) wins, whichever batch lands last. Only
        // unindexed columns change (`beat_txid`, not `txid`), so the update is HOT
        // (see migration 0004) and the row sync does not re-read the row: other nodes
        // read heartbeats through `beats`.
        //
        // `beat_txid` is stamped only where this batch's beat is the newest: a row
        // whose newest beat another node wrote keeps that node's stamp, so the row is
        // this node's own (and left out of its `beats` reads) only when it holds this
        // node's beat. The statement returns the batch's transaction id for that.
        let txid: i64 = sqlx::query_scalar(
            "WITH b AS (SELECT id, conns, now() - make_interval(secs => age / 1000.0) AS at \
                   FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(id, conns, age)), \
             u AS (UPDATE instances AS i SET \
               connections = CASE WHEN b.at >= i.last_heartbeat THEN b.conns ELSE i.connections END, \
               beat_txid = CASE WHEN b.at >= i.last_heartbeat THEN pg_current_xact_id() \
                           ELSE i.beat_txid END, \
               last_heartbeat = GREATEST(i.last_heartbeat, b.at) \
             FROM b WHERE i.id = b.id AND NOT i.deleted RETURNING 1) \
             SELECT pg_current_xact_id()::text::bigint",
        )
        .bind(&ids)
        .bind(&conns)
        .bind(&ages)
        .fetch_one(&self.pool)
        .await?;
        let mut own = lock(&self.own_beats);
        if own.len() == MAX_OWN_BEATS {
            // Forgetting one only means reading its rows back, as before.
            own.remove(0);
        }
        own.push(to_u64(txid));
        Ok(())
    }

    async fn load_all(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        Ok(self
            .changes(None)
            .await?
            .rows
            .into_iter()
            .map(|r| r.record)
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO write_probe (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET at = now()",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn close(&self) {
        // The listener holds a pooled connection: drop it first, or closing the pool
        // would wait for it forever.
        drop(self.listener.lock().await.take());
        let leader = lock(&self.leader).take();
        if let Some(conn) = leader {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }
}

#[async_trait]
impl ClusterStore for PgStore {
    async fn changes(&self, horizon: Option<u64>) -> Result<SyncBatch, StoreError> {
        let (mut tx, next) = self.snapshot().await?;
        let rows = match horizon {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM instances WHERE NOT deleted"
                )))
                .fetch_all(&mut *tx)
                .await?
            }
            Some(h) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM instances WHERE txid >= $1::text::xid8"
                )))
                .bind(h.to_string())
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        Ok(SyncBatch {
            rows: rows.iter().map(synced_from_row).collect::<Result<_, _>>()?,
            horizon: to_u64(next),
        })
    }

    async fn beats(&self, horizon: Option<u64>) -> Result<BeatBatch, StoreError> {
        // A heartbeat batch still running now has a transaction id at or above the
        // next horizon, so the next read has it.
        let (mut tx, next) = self.snapshot().await?;
        // This node's own heartbeat batches since the horizon: rows that hold one of
        // them hold a beat this node already has, and are not sent back to it (a third
        // of the rows with three nodes).
        let own: Vec<String> = {
            let mut own = lock(&self.own_beats);
            if let Some(h) = horizon {
                own.retain(|&t| t >= h);
            }
            own.iter().map(u64::to_string).collect()
        };
        // No index on `beat_txid` (it would make heartbeat writes non-HOT): a sequential
        // scan of the table, once per heartbeat sync period, filtered in the database.
        let rows = sqlx::query(
            "SELECT id, service, connections, \
             GREATEST(0, EXTRACT(EPOCH FROM (now() - last_heartbeat)) * 1000)::bigint AS age_ms \
             FROM instances WHERE NOT deleted \
             AND ($1::text IS NULL OR beat_txid >= $1::text::xid8) \
             AND (beat_txid IS NULL OR beat_txid <> ALL($2::text[]::xid8[]))",
        )
        .bind(horizon.map(|h| h.to_string()))
        .bind(&own)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let beats = rows
            .iter()
            .map(|r| {
                Ok(SyncedBeat {
                    id: r.try_get("id")?,
                    service: r.try_get("service")?,
                    connections: to_u64(r.try_get("connections")?),
                    age_ms: to_u64(r.try_get("age_ms")?),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(BeatBatch {
            beats,
            horizon: to_u64(next),
        })
    }

    async fn exchange_pending(
        &self,
        node: &str,
        mine: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !mine.is_empty() {
            let ids: Vec<&str> = mine.iter().map(|(id, _)| id.as_str()).collect();
            let counts: Vec<i64> = mine.iter().map(|(_, n)| to_i64(*n)).collect();
            sqlx::query(
                "WITH given AS (SELECT * FROM unnest($2::text[], $3::bigint[]) AS g(id, n)), \
                 gone AS (DELETE FROM handouts h USING given g \
                          WHERE h.node = $1 AND h.instance_id = g.id AND g.n = 0) \
                 INSERT INTO handouts (node, instance_id, pending, updated_at) \
                 SELECT $1, id, n, now() FROM given WHERE n > 0 \
                 ON CONFLICT (node, instance_id) DO UPDATE SET pending = excluded.pending, \
                 updated_at = now()",
            )
            .bind(node)
            .bind(&ids)
            .bind(&counts)
            .execute(&self.pool)
            .await?;
        }
        let rows = sqlx::query(
            "SELECT instance_id, SUM(pending)::bigint AS pending FROM handouts \
             WHERE node <> $1 AND updated_at > now() - interval '15 seconds' \
             GROUP BY instance_id",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("instance_id")?, to_u64(r.try_get("pending")?))))
            .collect()
    }

    async fn node_alive(&self, node: &str, within: Duration) -> Result<bool, StoreError> {
        let others: Vec<bool> = sqlx::query_scalar(
            "WITH others AS (SELECT EXISTS (SELECT 1 FROM nodes WHERE node <> $1 \
                 AND last_seen > now() - make_interval(secs => $2)) AS alive), \
             me AS (INSERT INTO nodes (node) VALUES ($1) \
                    ON CONFLICT (node) DO UPDATE SET last_seen = now()) \
             SELECT alive FROM others",
        )
        .bind(node)
        .bind(within.as_secs_f64())
        // Run to the end: a data-modifying statement's errors may follow its row.
        .fetch_all(&self.pool)
        .await?;
        Ok(others.first().copied().unwrap_or(false))
    }

    async fn grant_grace(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET last_heartbeat = now(), txid = pg_current_xact_id() \
             WHERE NOT deleted",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn try_lead(&self) -> bool {
        // The lock's connection is taken out of its slot for the round trips, so no
        // mutex is held across the database (a hung server cannot pin `close`); a
        // caller that gives up drops it, which ends the lock on the server.
        let held = lock(&self.leader).take();
        if let Some(mut conn) = held {
            // Still leading while the lock's connection answers.
            if conn.ping().await.is_ok() {
                *lock(&self.leader) = Some(conn);
                return true;
            }
        }
        let Ok(mut conn) = PgConnection::connect_with(&self.options).await else {
            return false;
        };
        let locked: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await;
        if matches!(locked, Ok(true)) {
            *lock(&self.leader) = Some(conn);
            true
        } else {
            let _ = conn.close().await;
            false
        }
    }

    async fn purge(&self, older_than: Duration) -> Result<u64, StoreError> {
        let secs = older_than.as_secs_f64();
        let tombstones = sqlx::query(
            "DELETE FROM instances WHERE deleted \
             AND last_heartbeat < now() - make_interval(secs => $1)",
        )
        .bind(secs)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM handouts WHERE updated_at < now() - make_interval(secs => $1)")
            .bind(secs)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE last_seen < now() - make_interval(secs => $1)")
            .bind(secs.max(3600.0))
            .execute(&self.pool)
            .await?;
        Ok(tombstones.rows_affected())
    }

    async fn next_notification(&self) {
        let mut slot = self.listener.lock().await;
        if slot.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => {
                    if listener.listen(CHANNEL).await.is_err() {
                        return;
                    }
                    *slot = Some(listener);
                }
                Err(_) => return,
            }
        }
        let listener = slot.as_mut().expect("connected above");
        if listener.recv().await.is_err() {
            *slot = None;
            return;
        }
        // One sync reads every change, however many notifications announced them: a
        // burst of 10,000 registrations must cost one read, not 10,000.
        // Whatever already waits in the connection is taken without waiting (recv is
        // cancel-safe: the sync loop already drops it at every periodic tick).
        for _ in 0..MAX_COALESCED {
            if listener.next_buffered().is_some() {
                continue;
            }
            match tokio::time::timeout(Duration::ZERO, listener.recv()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    *slot = None;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// PostgreSQL's statements of a batch, inside its transaction.
struct Statements;

#[async_trait]
impl group::Statements<PgConnection> for Statements {
    async fn upsert_round(
        &self,
        conn: &mut PgConnection,
        records: &[&InstanceRecord],
    ) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        // One statement for the round, as arrays (keys are distinct in a round: one
        // statement may not touch a row twice). The conflict keeps the old id.
        let text = |f: fn(&InstanceRecord) -> &String| -> Vec<&str> {
            records.iter().map(|r| f(r).as_str()).collect()
        };
        let weights: Vec<i32> = records
            .iter()
            .map(|r| i32::try_from(r.weight).unwrap_or(i32::MAX))
            .collect();
        let caps: Vec<Option<i64>> = records
            .iter()
            .map(|r| r.max_connections.map(to_i64))
            .collect();
        let zones: Vec<Option<&str>> = records.iter().map(|r| r.zone.as_deref()).collect();
        let ttls: Vec<i32> = records
            .iter()
            .map(|r| i32::try_from(r.ttl_secs).unwrap_or(i32::MAX))
            .collect();
        let rows = sqlx::query(
            "INSERT INTO instances (id, service, address, weight, max_connections, zone, tags, \
             metadata, ttl_secs, lease_hash) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], \
             $6::text[], $7::text[], $8::text[], $9::int[], $10::text[]) \
             ON CONFLICT (service, address) WHERE NOT deleted DO UPDATE SET \
             weight = excluded.weight, max_connections = excluded.max_connections, \
             zone = excluded.zone, tags = excluded.tags, metadata = excluded.metadata, \
             ttl_secs = excluded.ttl_secs, lease_hash = excluded.lease_hash, draining = false, \
             evacuate_per_sec = NULL, \
             last_heartbeat = now(), txid = pg_current_xact_id() \
             RETURNING id, service, address, \
             (EXTRACT(EPOCH FROM registered_at) * 1000)::bigint AS registered_at_ms",
        )
        .bind(text(|r| &r.id))
        .bind(text(|r| &r.service))
        .bind(text(|r| &r.address))
        .bind(&weights)
        .bind(&caps)
        .bind(&zones)
        .bind(text(|r| &r.tags_json))
        .bind(text(|r| &r.metadata_json))
        .bind(&ttls)
        .bind(text(|r| &r.lease_hash))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    row.try_get("service")?,
                    row.try_get("address")?,
                    to_u64(row.try_get("registered_at_ms")?),
                ))
            })
            .collect()
    }

    async fn drain(
        &self,
        conn: &mut PgConnection,
        service: &str,
        id: &str,
        evacuate_per_sec: Option<u32>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET draining = true, evacuate_per_sec = $3, \
             txid = pg_current_xact_id() WHERE service = $1 AND id = $2 AND NOT deleted",
        )
        .bind(service)
        .bind(id)
        .bind(evacuate_per_sec.map(i64::from))
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete(
        &self,
        conn: &mut PgConnection,
        service: &str,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET deleted = true, txid = pg_current_xact_id() \
             WHERE service = $1 AND id = ANY($2) AND NOT deleted",
        )
        .bind(service)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }
}
