//! Persistence of registrations behind one interface: the [`Store`] trait, its records
//! and [`StoreError`]. All SQL lives in the backends (`sqlite.rs`, `postgres.rs`);
//! `row.rs` is the one row decoder both use; `encoding.rs` maps an instance to its
//! columns and back; `health.rs` bounds and times store calls and says whether the
//! store can write (`/readyz`); `group.rs` queues registration writes to
//! one writer that commits them in batches ([`group::GroupCommit`]).
//!
//! Must not know about HTTP or ranking. Migrations are under `migrations/<backend>`.

pub mod encoding;
pub mod group;
pub mod health;
pub mod postgres;
pub mod row;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

/// A registration as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Instance id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Canonical `host:port`.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Cap, if any.
    pub max_connections: Option<u64>,
    /// Zone label.
    pub zone: Option<String>,
    /// Tags as a JSON array.
    pub tags_json: String,
    /// Metadata as a JSON object.
    pub metadata_json: String,
    /// TTL in seconds.
    pub ttl_secs: u32,
    /// Hex SHA-256 of the lease.
    pub lease_hash: String,
    /// Drained.
    pub draining: bool,
    /// Paced evacuation rate of a drained instance, connections per second.
    pub evacuate_per_sec: Option<u32>,
    /// Last persisted connection count.
    pub connections: u64,
    /// First registration.
    pub registered_at_ms: u64,
    /// Last persisted heartbeat.
    pub last_heartbeat_ms: u64,
}

/// The result of an upsert: the id the store holds for the address, and whether the
/// row is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// The id kept for this `(service, address)`.
    pub id: String,
    /// True when no row existed for the address.
    pub created: bool,
    /// Registration time of the row (kept across re-registration).
    pub registered_at_ms: u64,
}

/// A batched heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeatRecord {
    /// Instance id.
    pub id: String,
    /// Reported connections.
    pub connections: u64,
    /// Unix milliseconds of the heartbeat by this node's clock (SQLite).
    pub at_ms: u64,
    /// How long ago the heartbeat arrived, when the batch was built. PostgreSQL
    /// stores `now() - age`, so the database clock, not the node's, dates it.
    pub age_ms: u64,
}

/// A row as a cluster node syncs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedRow {
    /// The registration (its `last_heartbeat_ms` is not used: see `age_ms`).
    pub record: InstanceRecord,
    /// Age of the last heartbeat by the database clock.
    pub age_ms: u64,
    /// Deregistered or removed.
    pub deleted: bool,
}

/// Rows changed since a horizon, and the horizon for the next read.
#[derive(Debug, Clone, Default)]
pub struct SyncBatch {
    /// Changed rows (every live row on a full read).
    pub rows: Vec<SyncedRow>,
    /// Pass to the next [`ClusterStore::changes`].
    pub horizon: u64,
}

/// A heartbeat as a cluster node syncs it from another node's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedBeat {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Reported connections.
    pub connections: u64,
    /// Age of the heartbeat by the database clock.
    pub age_ms: u64,
}

/// Heartbeats written since a horizon, and the horizon for the next read.
#[derive(Debug, Clone, Default)]
pub struct BeatBatch {
    /// The newest heartbeat of every live instance written at or after the horizon.
    pub beats: Vec<SyncedBeat>,
    /// Pass to the next [`ClusterStore::beats`].
    pub horizon: u64,
}

/// What several registry nodes sharing one database need beyond [`Store`].
#[async_trait]
pub trait ClusterStore: Store {
    /// Rows changed at or after `horizon`, or every live row when `None`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn changes(&self, horizon: Option<u64>) -> Result<SyncBatch, StoreError>;

    /// Heartbeats written at or after `horizon` (every live instance's when `None`),
    /// less the rows whose newest beat this store's own heartbeat batches wrote (the
    /// node has those already). Heartbeat writes do not move a row into
    /// [`ClusterStore::changes`]: they are read here, apart, so that they change no
    /// indexed column.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn beats(&self, horizon: Option<u64>) -> Result<BeatBatch, StoreError>;

    /// Replaces this node's published pending hand-outs (only the given ids change;
    /// a count of 0 withdraws the row) and returns the other nodes' sums per id.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn exchange_pending(
        &self,
        node: &str,
        mine: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// Records that `node` is alive; returns whether another node was alive within
    /// `within` before it.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn node_alive(&self, node: &str, within: std::time::Duration)
    -> Result<bool, StoreError>;

    /// Restart grace for a whole cluster: every live instance's heartbeat is dated now.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn grant_grace(&self) -> Result<u64, StoreError>;

    /// Tries to become (or stay) the node that removes expired instances.
    async fn try_lead(&self) -> bool;

    /// Deletes tombstones and stale hand-out rows older than `older_than`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn purge(&self, older_than: std::time::Duration) -> Result<u64, StoreError>;

    /// Waits for a change notification from any node (returns at once on error, so
    /// the caller falls back to its periodic sync).
    async fn next_notification(&self);
}

/// A store failure; the operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed at start-up.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer in time.
    #[error("database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The URL names no supported backend.
    #[error(
        "unsupported database URL {0:?}: expected sqlite://<file>, sqlite::memory: or postgres://..."
    )]
    UnsupportedUrl(String),
    /// The batch this write was committed with failed (every write in it gets its
    /// error; none of them was stored).
    #[error(transparent)]
    Batch(Arc<StoreError>),
    /// The store's writer has stopped (the store is closing).
    #[error("the store is closed")]
    Closed,
    /// A stored row could not be read back.
    #[error("corrupt stored row {id}: {reason}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Runs a store call under `limit`: an unanswered call fails as
/// [`StoreError::Timeout`] (every wait on the database has a bound).
///
/// # Errors
/// The call's error, or [`StoreError::Timeout`].
pub async fn bounded<T>(
    limit: std::time::Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| StoreError::Timeout(limit))?
}

/// Durable storage of registrations.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `writes` in their order in ONE transaction, committed before it
    /// returns (so one fsync for all), and answers one [`group::Done`] per write in
    /// the same order. An upsert inserts or replaces the registration of
    /// `(service, address)`, keeping the existing id and registration time when the
    /// address is already registered; a drain answers whether the row exists; a
    /// delete how many rows went. Durable when it returns. Called by the one writer of
    /// [`group::GroupCommit`], never concurrently with itself.
    ///
    /// # Errors
    /// [`StoreError`]; nothing of the batch was written.
    async fn commit(&self, writes: &[group::Write]) -> Result<Vec<group::Done>, StoreError>;

    /// Persists a batch of heartbeats in one statement.
    ///
    /// # Errors
    /// [`StoreError`]; nothing was written.
    async fn save_beats(&self, beats: &[BeatRecord]) -> Result<(), StoreError>;

    /// Every stored instance, for the start-up restore.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn load_all(&self) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Answers when the database is reachable.
    ///
    /// # Errors
    /// [`StoreError`] when it is not.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Rewrites one probe row and commits: whether the store can write right now
    /// (after a failed write, a reachable database may still refuse writes).
    ///
    /// # Errors
    /// [`StoreError`] when the write or its commit fails.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Closes connections after the last write.
    async fn close(&self);
}

/// An opened store: every store, and the cluster side when it has one.
#[derive(Clone)]
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The same store as a cluster store (PostgreSQL), if it is one.
    pub cluster: Option<Arc<dyn ClusterStore>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens the store named by a `--db` URL and runs its migrations.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] for an unknown scheme, or the backend's error.
pub async fn open(url: &str) -> Result<Opened, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Opened {
            store: Arc::new(sqlite::SqliteStore::open(url).await?),
            cluster: None,
        })
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pg = Arc::new(postgres::PgStore::open(url).await?);
        Ok(Opened {
            store: pg.clone(),
            cluster: Some(pg),
        })
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
