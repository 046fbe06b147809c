//! Whether the store can write (for `/readyz`) and the bounds and timing every
//! registry store call gets: [`STORE_TIMEOUT`], the deadline of a write, and the
//! write-duration metric. Knows no table and no HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Store, StoreError, bounded};
use crate::metrics as names;

/// The longest a store call may take before the request fails with 503.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// When a store write begun now must have been answered.
pub fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + STORE_TIMEOUT
}

/// `call` bounded by [`STORE_TIMEOUT`].
pub async fn timed<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    bounded(STORE_TIMEOUT, call).await
}

/// Whether the last write to the store failed: `/readyz` answers 503 until a write
/// (or its probe) succeeds again.
#[derive(Debug, Default)]
pub struct StoreHealth {
    write_failing: AtomicBool,
}

impl StoreHealth {
    /// Runs a store write until `deadline` and records whether the store can write,
    /// for `/readyz`.
    pub async fn write<T>(
        &self,
        op: &'static str,
        deadline: tokio::time::Instant,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout_at(deadline, call)
            .await
            .unwrap_or(Err(StoreError::Timeout(STORE_TIMEOUT)));
        let failing = result.is_err();
        metrics::histogram!(
            names::STORE_WRITE_DURATION,
            "op" => op,
            "outcome" => if failing { "error" } else { "ok" },
        )
        .record(started.elapsed().as_secs_f64());
        if self.write_failing.swap(failing, Ordering::Relaxed) != failing {
            if failing {
                tracing::warn!("store writes failing: not ready until they succeed again");
            } else {
                tracing::info!("store writes succeed again");
            }
        }
        result
    }

    /// Whether `store` answers within a second and, after a failed write, can write.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ready(&self, store: &dyn Store) -> Result<(), StoreError> {
        let limit = Duration::from_secs(1);
        bounded(limit, store.ping()).await?;
        if self.write_failing.load(Ordering::Relaxed) {
            // Reachable is not enough after a failed write (a full disk answers reads).
            bounded(limit, store.probe_write()).await?;
            self.write_failing.store(false, Ordering::Relaxed);
            tracing::info!("store writes succeed again");
        }
        Ok(())
    }
}
