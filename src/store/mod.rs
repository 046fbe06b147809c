//! Persistence of registrations behind one interface: the [`Store`] trait, its records
//! and [`StoreError`]. All SQL lives in the backends (`sqlite.rs`; PostgreSQL later).
//!
//! Must not know about HTTP or ranking. Migrations are under `migrations/<backend>`.

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
    /// Unix milliseconds of the heartbeat.
    pub at_ms: u64,
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
    /// A stored row could not be read back.
    #[error("corrupt stored row {id}: {reason}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Durable storage of registrations.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces the registration of `(service, address)`, keeping the
    /// existing id and registration time when the address is already registered.
    /// Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`]; nothing was written.
    async fn upsert(&self, record: &InstanceRecord) -> Result<Upserted, StoreError>;

    /// Marks an instance draining. Returns false when no such row exists.
    ///
    /// # Errors
    /// [`StoreError`]; nothing was written.
    async fn set_draining(&self, service: &str, id: &str) -> Result<bool, StoreError>;

    /// Deletes instances by id. Returns how many rows went.
    ///
    /// # Errors
    /// [`StoreError`]; nothing was written.
    async fn delete(&self, service: &str, ids: &[String]) -> Result<u64, StoreError>;

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

    /// Closes connections after the last write.
    async fn close(&self);
}

/// Opens the store named by a `--db` URL and runs its migrations.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] for an unknown scheme, or the backend's error.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
