//! What the bench reads from PostgreSQL: its own database (created and dropped), the
//! database's counters, its backends' PIDs, the `instances` table's statistics (updates,
//! HOT updates, dead rows) and the heartbeat ages of the rows. Changes nothing the nodes
//! store.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use super::{HEARTBEAT_EVERY, PG_BASE, SERIES_EVERY, SERVICE, TTL_SECS};

pub async fn create_database() -> anyhow::Result<String> {
    let name = format!("sb_bench_{:016x}", rand::random::<u64>());
    let mut conn = PgConnection::connect(&format!("{PG_BASE}/postgres"))
        .await
        .context("PostgreSQL must answer on 127.0.0.1:5432 as user postgres (trust auth)")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = conn.close().await;
    Ok(name)
}

pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&format!("{PG_BASE}/postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Cumulative counters of the bench database (`pg_stat_database`) and of WAL.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgWindow {
    pub commits: i64,
    pub rollbacks: i64,
    pub tup_updated: i64,
    pub tup_inserted: i64,
    pub tup_returned: i64,
    pub wal_bytes: i64,
    /// `pg_notification_queue_usage()` (not a counter: the reading itself).
    pub notify_queue: f64,
}

impl PgWindow {
    pub fn minus(&self, before: &PgWindow) -> PgWindow {
        PgWindow {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            tup_updated: self.tup_updated - before.tup_updated,
            tup_inserted: self.tup_inserted - before.tup_inserted,
            tup_returned: self.tup_returned - before.tup_returned,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            notify_queue: self.notify_queue,
        }
    }
}

pub async fn pg_window_counters(conn: &mut PgConnection, db: &str) -> anyhow::Result<PgWindow> {
    let row: (i64, i64, i64, i64, i64, i64, f64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback, tup_updated, tup_inserted, tup_returned, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
         pg_notification_queue_usage() \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(conn)
    .await
    .context("reading pg_stat_database")?;
    Ok(PgWindow {
        commits: row.0,
        rollbacks: row.1,
        tup_updated: row.2,
        tup_inserted: row.3,
        tup_returned: row.4,
        wal_bytes: row.5,
        notify_queue: row.6,
    })
}

/// Transactions per second of `db`, per [`SERIES_EVERY`] slice of the window, read on a
/// connection of its own to the `postgres` database.
pub async fn pg_series(
    db: String,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Vec<f64> {
    let mut out = Vec::new();
    let Ok(mut conn) = PgConnection::connect(&format!("{PG_BASE}/postgres")).await else {
        return out;
    };
    let read = async |conn: &mut PgConnection| -> Option<i64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&db)
        .fetch_one(conn)
        .await
        .ok()
    };
    let mut last = read(&mut conn).await;
    let mut at = start;
    for _ in 0..10_000 {
        let next = at + SERIES_EVERY;
        if next > end {
            break;
        }
        tokio::time::sleep_until(next).await;
        let now = read(&mut conn).await;
        if let (Some(a), Some(b)) = (last, now) {
            out.push((b - a) as f64 / (next - at).as_secs_f64());
        }
        last = now;
        at = next;
    }
    let _ = conn.close().await;
    out
}

pub async fn pg_backends(conn: &mut PgConnection, db: &str) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(conn)
        .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// Cumulative statistics of the `instances` table (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStats {
    pub seq_scans: i64,
    pub seq_rows: i64,
    pub idx_scans: i64,
    pub updates: i64,
    pub hot_updates: i64,
    pub live: i64,
    pub dead: i64,
    pub total_bytes: i64,
    pub autovacuums: i64,
}

pub async fn table_stats(conn: &mut PgConnection) -> anyhow::Result<TableStats> {
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT seq_scan, seq_tup_read, COALESCE(idx_scan, 0), n_tup_upd, n_tup_hot_upd, \
         n_live_tup, n_dead_tup, pg_total_relation_size(relid), autovacuum_count \
         FROM pg_stat_user_tables WHERE relname = 'instances'",
    )
    .fetch_one(conn)
    .await?;
    Ok(TableStats {
        seq_scans: row.0,
        seq_rows: row.1,
        idx_scans: row.2,
        updates: row.3,
        hot_updates: row.4,
        live: row.5,
        dead: row.6,
        total_bytes: row.7,
        autovacuums: row.8,
    })
}

/// Heartbeat ages of the fleet's rows, by the database clock.
#[derive(Debug, Clone, Copy)]
pub struct DbAges {
    pub rows: i64,
    pub max_secs: f64,
    pub over_heartbeat: i64,
    pub over_ttl: i64,
}

pub async fn db_ages(conn: &mut PgConnection) -> anyhow::Result<DbAges> {
    let row: (i64, f64, i64, i64) = sqlx::query_as(
        "SELECT count(*), \
         COALESCE(max(EXTRACT(EPOCH FROM now() - last_heartbeat)), 0)::float8, \
         count(*) FILTER (WHERE now() - last_heartbeat > make_interval(secs => $2)), \
         count(*) FILTER (WHERE now() - last_heartbeat > make_interval(secs => $3)) \
         FROM instances WHERE service = $1 AND NOT deleted",
    )
    .bind(SERVICE)
    .bind(HEARTBEAT_EVERY.as_secs_f64() + 1.0)
    .bind(TTL_SECS as f64)
    .fetch_one(conn)
    .await?;
    Ok(DbAges {
        rows: row.0,
        max_secs: row.1,
        over_heartbeat: row.2,
        over_ttl: row.3,
    })
}

// ---------------------------------------------------------------------------------
