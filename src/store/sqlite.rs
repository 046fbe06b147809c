//! The embedded SQLite store: one file (WAL, `synchronous = FULL`, so an acknowledged
//! registration survives power loss) or `sqlite::memory:` for throwaway runs.
//!
//! Owns all SQLite SQL. Heartbeats arrive in batches written by one statement.
//!
//! Every write goes through one connection of its own, kept apart from the pool the
//! reads use: SQLite lets one writer in at a time anyway, and a connection that is the
//! only writer keeps its page cache valid from one transaction to the next (any other
//! connection's commit makes it re-read every page it touches).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection};
use tokio::sync::{Mutex, MutexGuard};

use super::group::{self, Done, Write};
use super::row::{record_from_row, to_i64, to_u64};
use super::{BeatRecord, InstanceRecord, Store, StoreError};

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows one upsert statement carries: a round of more is split, one of fewer is padded
/// with NULL rows, so every round runs the one statement, prepared once and cached by
/// the connection (see [`UPSERT_SQL`]).
const ROWS_PER_UPSERT: usize = 64;

/// Rows the connection's worker thread may send ahead of the task reading them: more
/// than a statement returns, so a `RETURNING` never stops the worker halfway to wait.
const ROW_BUFFER: usize = 2 * ROWS_PER_UPSERT;

/// Parameters of one row of [`UPSERT_SQL`].
const UPSERT_PARAMS: usize = 13;

/// The upsert of up to [`ROWS_PER_UPSERT`] rows, their fields bound as parameters
/// (`VALUES (?, ...), ...`): cheaper than the JSON array it replaced (built per row
/// in Rust, then parsed again by `json_each` and `->>` for every column: 7 % of a
/// registration's CPU under the registry bench). Unused rows are NULLs, filtered out by
/// `WHERE column1 IS NOT NULL` (which also tells SQLite's parser that ON CONFLICT
/// belongs to the INSERT). The conflict target keeps the old id and registration
/// time, so a returned id equal to the proposed one means the row is new.
static UPSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = format!("({})", vec!["?"; UPSERT_PARAMS].join(", "));
    let rows = vec![row.as_str(); ROWS_PER_UPSERT].join(", ");
    format!(
        "INSERT INTO instances (id, service, address, weight, max_connections, zone, tags, \
         metadata, ttl_secs, lease_hash, draining, connections, registered_at_ms, \
         last_heartbeat_ms) \
         SELECT column1, column2, column3, column4, column5, column6, column7, column8, \
         column9, column10, 0, column11, column12, column13 \
         FROM (VALUES {rows}) WHERE column1 IS NOT NULL \
         ON CONFLICT (service, address) DO UPDATE SET weight = excluded.weight, \
         max_connections = excluded.max_connections, zone = excluded.zone, \
         tags = excluded.tags, metadata = excluded.metadata, ttl_secs = excluded.ttl_secs, \
         lease_hash = excluded.lease_hash, draining = 0, evacuate_per_sec = NULL, \
         last_heartbeat_ms = excluded.last_heartbeat_ms \
         RETURNING id, service, address, registered_at_ms"
    )
});

/// A SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection of every write (see the module doc); `None` for
    /// `sqlite::memory:`, whose one database is the pool's one connection, and after
    /// [`Store::close`].
    writer: Mutex<Option<SqliteConnection>>,
    in_memory: bool,
    /// `sqlite::memory:` only: a connection that runs nothing and keeps the database
    /// alive. SQLite drops an in-memory database with its last connection, and sqlx
    /// closes the pool's one connection when a write on it is cancelled midway (a
    /// store timeout): without this one the store went on with an empty database, no
    /// tables, every write failing (`tests/memory_store.rs`).
    keeper: Mutex<Option<SqliteConnection>>,
}

/// The connection a write runs on: the store's writer, or the in-memory pool's one.
enum WriteConn<'a> {
    Own(MutexGuard<'a, Option<SqliteConnection>>),
    Pooled(PoolConnection<Sqlite>),
}

impl std::ops::Deref for WriteConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            WriteConn::Own(guard) => guard.as_ref().expect("checked open by begin"),
            WriteConn::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            WriteConn::Own(guard) => guard.as_mut().expect("checked open by begin"),
            WriteConn::Pooled(conn) => conn,
        }
    }
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
            .busy_timeout(BUSY_TIMEOUT)
            .row_buffer_size(ROW_BUFFER);
        // The in-memory store's pool has one connection for its whole life: connections
        // to one shared-cache database lock each other's tables, so its reads and writes
        // take turns on one (the keeper below only holds the database open).
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
        .connect_with(options.clone())
        .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // `options` names one shared-cache database (sqlx gives `:memory:` a name of its
        // own), so this connection and the pool's are to the same one.
        let (writer, keeper) = if in_memory {
            (None, Some(SqliteConnection::connect_with(&options).await?))
        } else {
            (Some(SqliteConnection::connect_with(&options).await?), None)
        };
        Ok(SqliteStore {
            pool,
            writer: Mutex::new(writer),
            in_memory,
            keeper: Mutex::new(keeper),
        })
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
    async fn begin(&self) -> Result<WriteConn<'_>, StoreError> {
        let mut conn = if self.in_memory {
            WriteConn::Pooled(self.pool.acquire().await?)
        } else {
            let guard = tokio::time::timeout(BUSY_TIMEOUT, self.writer.lock())
                .await
                .map_err(|_| StoreError::Timeout(BUSY_TIMEOUT))?;
            if guard.is_none() {
                return Err(StoreError::Closed);
            }
            WriteConn::Own(guard)
        };
        if sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .is_err()
        {
            // A write cancelled midway (its caller timed out and answered 503) can
            // leave the connection inside a transaction: end it, try again.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        }
        Ok(conn)
    }
}

/// Commits the write transaction of `conn` if its statement succeeded, else rolls it
/// back; either way the connection is left outside any transaction.
async fn finish<T, E: Into<StoreError>>(
    conn: &mut WriteConn<'_>,
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
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.close().await;
        }
        self.pool.close().await;
        if let Some(keeper) = self.keeper.lock().await.take() {
            let _ = keeper.close().await;
        }
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
        let mut returned = Vec::with_capacity(records.len());
        for chunk in records.chunks(ROWS_PER_UPSERT) {
            let mut query = sqlx::query(UPSERT_SQL.as_str());
            for r in chunk {
                query = query
                    .bind(r.id.as_str())
                    .bind(r.service.as_str())
                    .bind(r.address.as_str())
                    .bind(r.weight)
                    .bind(r.max_connections.map(to_i64))
                    .bind(r.zone.as_deref())
                    .bind(r.tags_json.as_str())
                    .bind(r.metadata_json.as_str())
                    .bind(r.ttl_secs)
                    .bind(r.lease_hash.as_str())
                    .bind(to_i64(r.connections))
                    .bind(to_i64(r.registered_at_ms))
                    .bind(to_i64(r.last_heartbeat_ms));
            }
            for _ in chunk.len() * UPSERT_PARAMS..ROWS_PER_UPSERT * UPSERT_PARAMS {
                query = query.bind(None::<i64>);
            }
            for row in query.fetch_all(&mut *conn).await? {
                returned.push((
                    row.try_get("id")?,
                    row.try_get("service")?,
                    row.try_get("address")?,
                    to_u64(row.try_get("registered_at_ms")?),
                ));
            }
        }
        Ok(returned)
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
