//! The hub's upkeep: the sweep (expiry, removal after 3 x TTL, self-preservation)
//! and the heartbeat flush (batches of beats to the store, a failed batch kept for
//! the next), store readiness and close. The loops that call them are in `sync.rs`
//! and `cluster/`.

use std::sync::Arc;

use super::{Hub, ServiceSlot, commands::settle, lock};
use crate::metrics as names;
use crate::registry::Millis;
use crate::registry::ServiceTable;
use crate::registry::table::{self, PreservationEvent};
use crate::store::group::Write;
use crate::store::health::deadline;
use crate::store::{BeatRecord, StoreError};

impl Hub {
    /// Expires, removes and judges self-preservation in every service; removals are
    /// deleted from the store. Returns how many instances were removed.
    pub async fn sweep(&self) -> usize {
        let slots: Vec<(String, Arc<ServiceSlot>)> = self
            .inner
            .services
            .iter()
            .map(|s| (s.key().clone(), Arc::clone(s.value())))
            .collect();
        let mut removed = 0;
        let mut deletes = Vec::new();
        let deadline = deadline();
        for (service, slot) in slots {
            // Removals are decided from the table: under the write mutex, once every
            // queued write of the service is applied, and queued before the mutex
            // goes, so a re-registration is either seen here or committed after the
            // delete (see `register`).
            let Ok(_order) = tokio::time::timeout_at(deadline, slot.writes.lock()).await else {
                break;
            };
            if settle(&slot, deadline).await.is_err() {
                break;
            }
            let now = self.now();
            let may_remove = self.may_remove();
            let (outcome, expired) = slot.apply(|t| (t.sweep(now, may_remove), t.take_expiries()));
            match outcome.preservation {
                Some(PreservationEvent::Started {
                    expiring,
                    population,
                }) => tracing::warn!(
                    %service, expiring, population,
                    "self-preservation on: most instances stopped heartbeating at once; \
                     suspecting our own network, keeping the last known set"
                ),
                Some(PreservationEvent::Ended) => {
                    tracing::info!(%service, "self-preservation off");
                }
                None => {}
            }
            if expired > 0 {
                metrics::counter!(names::EXPIRIES, "service" => service.clone()).increment(expired);
            }
            if outcome.removed.is_empty() {
                continue;
            }
            metrics::counter!(names::REMOVALS, "service" => service.clone(), "reason" => "expired")
                .increment(outcome.removed.len() as u64);
            removed += outcome.removed.len();
            tracing::info!(%service, count = outcome.removed.len(), "removed instances after 3 x ttl without heartbeat");
            let write = Write::Delete {
                service: service.clone(),
                ids: outcome.removed,
            };
            match self.submit(deadline, write, None).await {
                Ok(pending) => deletes.push((service, pending)),
                Err(err) => {
                    tracing::warn!(%service, %err, "could not delete removed instances from the store");
                }
            }
        }
        // The commits are awaited once every service's removals are queued.
        let deadline = self::deadline();
        for (service, pending) in deletes {
            if let Err(err) = self
                .inner
                .health
                .write("remove", deadline, pending.done())
                .await
            {
                tracing::warn!(%service, %err, "could not delete removed instances from the store");
            }
        }
        // Services left with no instance go (none is held by the loop any more).
        let empty: Vec<String> = self
            .inner
            .services
            .iter()
            .filter(|s| s.value().lock().is_empty())
            .map(|s| s.key().clone())
            .collect();
        for service in empty {
            self.drop_if_unused(&service);
        }
        removed
    }

    /// Persists the heartbeats received since the last call, in one batch.
    ///
    /// # Errors
    /// [`StoreError`]; the batch is kept and retried by the next call.
    pub async fn flush_beats(&self) -> Result<usize, StoreError> {
        self.flush_taken(|table, _| table.take_dirty()).await
    }

    /// Persists, in one batch, the heartbeats due now (see
    /// [`ServiceTable::take_due_beats`]: `min_gap` by TTL in seconds); the others wait
    /// for a later call, and a final [`Hub::flush_beats`] writes them all.
    ///
    /// # Errors
    /// [`StoreError`]; the batch is kept and retried by the next call.
    pub(crate) async fn flush_due_beats(
        &self,
        rule: &table::BeatRule,
    ) -> Result<usize, StoreError> {
        self.flush_taken(|table, now| table.take_due_beats(now, rule))
            .await
    }

    /// Writes what `take` takes from every table, with the batch that failed last time.
    async fn flush_taken(
        &self,
        take: impl Fn(&mut ServiceTable, Millis) -> Vec<table::DirtyBeat>,
    ) -> Result<usize, StoreError> {
        let clock = self.inner.clock;
        let now = self.now();
        let mut batch = std::mem::take(&mut *lock(&self.inner.unsaved));
        let slots = self.all_slots();
        for slot in slots {
            for beat in take(&mut slot.lock(), now) {
                batch.insert(
                    beat.id.clone(),
                    BeatRecord {
                        id: beat.id,
                        connections: beat.connections,
                        at_ms: clock.to_unix_ms(beat.last_seen),
                        age_ms: now.saturating_sub(beat.last_seen),
                    },
                );
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let beats: Vec<BeatRecord> = batch.values().cloned().collect();
        metrics::histogram!(names::HEARTBEAT_BATCH_SIZE).record(beats.len() as f64);
        match self
            .inner
            .health
            .write(
                "heartbeats",
                deadline(),
                self.inner.store.save_beats(&beats),
            )
            .await
        {
            Ok(()) => Ok(beats.len()),
            Err(err) => {
                let mut unsaved = lock(&self.inner.unsaved);
                for (id, beat) in batch {
                    unsaved.entry(id).or_insert(beat);
                }
                Err(err)
            }
        }
    }

    /// Whether the store answers within a second and, after a failed write, can write.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.inner.health.ready(&*self.inner.store).await
    }

    /// Closes the store after the last flush.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }
}
