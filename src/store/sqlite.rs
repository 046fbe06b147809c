//! The embedded SQLite store: one file (WAL, `synchronous = FULL`, so an acknowledged
//! registration survives power loss) or `sqlite::memory:` for throwaway runs.
//!
//! Owns all SQLite SQL. Heartbeats arrive in batches written by one statement.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection};

use super::group::{self, Done, Write};
use super::row::{record_from_row, to_i64, to_u64};
use super::{BeatRecord, InstanceRecord, Store, StoreError};

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and migrates it.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened or migrated.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        // Every pooled connection to `:memory:` would be a database of its own, so the
        // in-memory store keeps exactly one connection for its whole life.
        let pool = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        }
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

impl SqliteStore {
    /// A pooled connection inside a fresh write transaction. Writes go through
    /// [`finish`] so that the answer waits for `COMMIT` and sees its error.
    ///
    /// The transaction statements are plain SQL rather than sqlx's transaction type,
    /// whose depth counter a failed `COMMIT` leaves behind (SQLite may already have
    /// rolled back by itself): with it, on a full disk, writes after a failed commit
    /// were acknowledged and then missing after kill -9 (`tests/disk_full.rs`).
    /// Here `finish` always leaves the connection outside any transaction.
    async fn begin(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .is_err()
        {
            // A request cancelled mid-write (its caller timed out and answered 503)
            // can hand its connection back inside a transaction: end it, try again.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        }
        Ok(conn)
    }
}

/// Commits the write transaction of `conn` if its statement succeeded, else rolls it
/// back; either way the connection goes back to the pool outside any transaction.
async fn finish<T, E: Into<StoreError>>(
    conn: &mut PoolConnection<Sqlite>,
    outcome: Result<T, E>,
) -> Result<T, StoreError> {
    let committed = match outcome {
        Ok(value) => sqlx::raw_sql("COMMIT")
            .execute(&mut **conn)
            .await
            .map(|_| value)
            .map_err(StoreError::from),
        Err(err) => Err(err.into()),
    };
    if committed.is_err() {
        // Also after a failed COMMIT, which may or may not have rolled back already;
        // "no transaction is active" is then the expected answer.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await;
    }
    committed
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, writes: &[Write]) -> Result<Vec<Done>, StoreError> {
        // One explicit transaction for the whole batch, run to its end, then
        // committed: in autocommit mode SQLite commits when a statement finishes,
        // after `RETURNING` has already produced its rows, so a failed commit (disk
        // full, I/O error) would go unseen and registrations be acknowledged but lost.
        // With `synchronous = FULL` that one COMMIT is one fsync of the WAL.
        let mut conn = self.begin().await?;
        // A failed statement rolls the whole batch back: no half batch is stored.
        let outcome = group::run_in_order(&mut *conn, writes, &Statements).await;
        finish(&mut conn, outcome).await
    }

    async fn save_beats(&self, beats: &[BeatRecord]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let batch: Vec<(&str, i64, i64)> = beats
            .iter()
            .map(|b| (b.id.as_str(), to_i64(b.connections), to_i64(b.at_ms)))
            .collect();
        let batch = serde_json::to_string(&batch).expect("tuples of str and i64 serialize");
        let mut conn = self.begin().await?;
        let done = sqlx::query(
            "UPDATE instances SET connections = b.c, last_heartbeat_ms = b.t \
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS c, value ->> 2 AS t \
                   FROM json_each(?1)) AS b \
             WHERE instances.id = b.id",
        )
        .bind(batch)
        .execute(&mut *conn)
        .await;
        finish(&mut conn, done).await?;
        Ok(())
    }

    async fn load_all(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY registered_at_ms")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let mut conn = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO write_probe (id, at_ms) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(to_i64(crate::clock::unix_ms(std::time::SystemTime::now())))
        .execute(&mut *conn)
        .await;
        finish(&mut conn, done).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// SQLite's statements of a batch, inside its transaction.
struct Statements;

#[async_trait]
impl group::Statements<SqliteConnection> for Statements {
    async fn upsert_round(
        &self,
        conn: &mut SqliteConnection,
        records: &[&InstanceRecord],
    ) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        // One statement for the round, its rows as one JSON array (keys are distinct
        // in a round). The conflict target keeps the old id and registration time, so
        // a returned id equal to the proposed one means the row is new.
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    &r.id,
                    &r.service,
                    &r.address,
                    r.weight,
                    r.max_connections.map(to_i64),
                    &r.zone,
                    &r.tags_json,
                    &r.metadata_json,
                    r.ttl_secs,
                    &r.lease_hash,
                    to_i64(r.connections),
                    to_i64(r.registered_at_ms),
                    to_i64(r.last_heartbeat_ms),
                )
            })
            .collect();
        let rows = serde_json::to_string(&rows).expect("strings and integers serialize");
        // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the INSERT.
        let returned = sqlx::query(
            "INSERT INTO instances (id, service, address, weight, max_connections, zone, tags, \
             metadata, ttl_secs, lease_hash, draining, connections, registered_at_ms, \
             last_heartbeat_ms) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
             value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, 0, \
             value ->> 10, value ->> 11, value ->> 12 \
             FROM json_each(?1) WHERE true \
             ON CONFLICT (service, address) DO UPDATE SET weight = excluded.weight, \
             max_connections = excluded.max_connections, zone = excluded.zone, \
             tags = excluded.tags, metadata = excluded.metadata, ttl_secs = excluded.ttl_secs, \
             lease_hash = excluded.lease_hash, draining = 0, evacuate_per_sec = NULL, \
             last_heartbeat_ms = excluded.last_heartbeat_ms \
             RETURNING id, service, address, registered_at_ms",
        )
        .bind(rows)
        .fetch_all(&mut *conn)
        .await?;
        returned
            .iter()
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
        conn: &mut SqliteConnection,
        service: &str,
        id: &str,
        evacuate_per_sec: Option<u32>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET draining = 1, evacuate_per_sec = ?3 \
             WHERE service = ?1 AND id = ?2",
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
        conn: &mut SqliteConnection,
        service: &str,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(ids).expect("a list of strings serializes");
        let done = sqlx::query(
            "DELETE FROM instances WHERE service = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(service)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }
}
