//! The hub's writes: registration (durable before it is answered), heartbeats (memory
//! first, flushed in batches by `upkeep.rs`), drain and deregistration, and the
//! order they keep through the store's group commit (see [`Hub::register`]).
//! Must not encode columns (`store::encoding`) nor rank.

use std::sync::Arc;

use super::{Authority, Hub, HubError, Registered, ServiceSlot, lease_error, unknown};
use crate::lease;
use crate::metrics as names;
use crate::registry::InstanceSpec;
use crate::registry::table::{HeartbeatAnswer, InstanceView};
use crate::store::StoreError;
use crate::store::encoding;
use crate::store::group::{AfterCommit, Done, Pending, Write};
use crate::store::health::{STORE_TIMEOUT, deadline, timed};

/// Waits until every queued write of `slot`'s service is applied to its table (or
/// dropped). Called under the service's write mutex, so nothing new is queued
/// meanwhile and the wait ends within the batches already queued.
pub(super) async fn settle(
    slot: &ServiceSlot,
    deadline: tokio::time::Instant,
) -> Result<(), StoreError> {
    let mut queued = slot.queued.subscribe();
    tokio::time::timeout_at(deadline, queued.wait_for(|n| *n == 0))
        .await
        .map_err(|_| StoreError::Timeout(STORE_TIMEOUT))?
        .map(|_| ())
        .map_err(|_| StoreError::Closed)
}

/// One write of a service counted in its slot's `queued` from its queueing until its
/// hook ran or was dropped (committed, failed, or its caller gone).
struct Queued(Arc<ServiceSlot>);

impl Queued {
    fn new(slot: &Arc<ServiceSlot>) -> Self {
        slot.queued.send_modify(|n| *n += 1);
        Queued(Arc::clone(slot))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Hub {
    /// Loads every stored instance. Each gets a fresh grace period of one TTL to
    /// heartbeat again before it can expire. Returns how many were restored.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn restore(&self) -> Result<usize, StoreError> {
        let records = timed(self.inner.store.load_all()).await?;
        let now = self.now();
        let mut restored = 0;
        for record in records {
            let service = record.service.clone();
            match encoding::instance_from_record(record, now) {
                Ok(instance) => {
                    self.slot_or_create(&service)
                        .apply(|t| t.upsert(instance, now));
                    restored += 1;
                }
                Err(err) => tracing::error!(%err, "skipping unreadable stored instance"),
            }
        }
        Ok(restored)
    }

    /// Queues a write of `slot`'s service to the store's writer, in this service's
    /// order, with `then` to run on the table once it is committed. With `settled`,
    /// first waits until every earlier write of the service is applied, and runs
    /// `check` on the table as it then is (a decision that reads the table must see
    /// what is committed before it); nothing of this service is queued meanwhile.
    async fn queue(
        &self,
        slot: &Arc<ServiceSlot>,
        deadline: tokio::time::Instant,
        settled: Option<&(dyn Fn() -> Result<(), HubError> + Sync)>,
        write: Write,
        then: AfterCommit,
    ) -> Result<Pending, HubError> {
        let _order = tokio::time::timeout_at(deadline, slot.writes.lock())
            .await
            .map_err(|_| StoreError::Timeout(STORE_TIMEOUT))?;
        if let Some(check) = settled {
            settle(slot, deadline).await?;
            check()?;
        }
        // Counted from here, under the mutex (a `settle` waiting under it must not
        // wait for a write that cannot be queued before it lets go), until the hook
        // ran or was dropped.
        let queued = Queued::new(slot);
        let then: AfterCommit = Box::new(move |done| {
            then(done);
            drop(queued);
        });
        Ok(self.submit(deadline, write, Some(then)).await?)
    }

    /// Queues `write` to the store's writer, waiting for room until `deadline`.
    pub(super) async fn submit(
        &self,
        deadline: tokio::time::Instant,
        write: Write,
        then: Option<AfterCommit>,
    ) -> Result<Pending, StoreError> {
        tokio::time::timeout_at(deadline, self.inner.writer.submit(write, then))
            .await
            .map_err(|_| StoreError::Timeout(STORE_TIMEOUT))?
    }

    /// Registers (or re-registers) an instance; durable before it returns.
    ///
    /// Concurrent registrations, of one service or several, share a commit. Why the
    /// store-before-memory order still holds without holding the service's write
    /// mutex across the commit (as it once was):
    /// - the write enters the store's queue under the service's write mutex, so the
    ///   queue holds this service's writes in the order they were decided;
    /// - the one writer commits batches one after another in queue order, and inside a
    ///   batch runs the writes in queue order (only writes of different addresses,
    ///   so different rows, may share a statement: `group::rounds`);
    /// - the table is changed by the hook below, which the writer runs after the
    ///   batch's commit succeeded, in queue order, before it answers anyone. So the
    ///   table never shows a row that is not committed, the same id's writes reach the
    ///   table in the order they were committed, a failed batch changes no table, and
    ///   a caller that stopped waiting cannot leave memory behind the store;
    /// - writes that decide from the table (drain, deregistration, the sweep's
    ///   removals) first wait under the mutex until this service's queued writes are
    ///   applied (`queue` with `settled`), so they see every earlier registration, and
    ///   none can slip in between their check and their place in the queue.
    ///
    /// # Errors
    /// [`HubError::Store`] when the store fails; nothing changed.
    pub async fn register(
        &self,
        service: &str,
        spec: InstanceSpec,
    ) -> Result<Registered, HubError> {
        let deadline = deadline();
        let slot = self.slot_or_create(service);
        let lease = lease::new_lease();
        let lease_hash = lease::hash(&lease);
        let now_unix = self.inner.clock.unix_now_ms();
        let record = encoding::new_record(lease::new_id(), service, &spec, &lease_hash, now_unix);
        let (ttl_secs, heartbeat_secs) = (spec.ttl_secs, spec.heartbeat_secs());
        let target = Arc::clone(&slot);
        let clock = self.inner.clock;
        let then: AfterCommit = Box::new(move |done| {
            if let Done::Upserted(stored) = done {
                let now = clock.now();
                target.apply(|t| {
                    t.register(
                        stored.id.clone(),
                        spec,
                        lease_hash,
                        now,
                        stored.registered_at_ms,
                    )
                });
            }
        });
        let stored = match self
            .queue(&slot, deadline, None, Write::Upsert(record), then)
            .await
        {
            Ok(pending) => self
                .inner
                .health
                .write("register", deadline, pending.done())
                .await
                .and_then(Done::upserted)
                .map_err(HubError::from),
            Err(err) => Err(err),
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(err) => {
                // Nothing stored, nothing in memory: not even a new, empty service.
                drop(slot);
                self.drop_if_unused(service);
                return Err(err);
            }
        };
        let outcome = if stored.created {
            "created"
        } else {
            "replaced"
        };
        metrics::counter!(names::REGISTRATIONS, "service" => service.to_owned(), "outcome" => outcome)
            .increment(1);
        Ok(Registered {
            id: stored.id,
            service: service.to_owned(),
            lease,
            ttl_secs,
            heartbeat_secs,
            created: stored.created,
        })
    }

    /// Applies a heartbeat in memory; it reaches the store with the next batch.
    ///
    /// # Errors
    /// [`HubError::UnknownInstance`] or [`HubError::BadLease`]; nothing changed.
    pub fn heartbeat(
        &self,
        service: &str,
        id: &str,
        lease: &str,
        connections: Option<u64>,
    ) -> Result<HeartbeatAnswer, HubError> {
        let slot = self.slot(service).ok_or_else(|| unknown(service, id))?;
        let lease_hash = lease::hash(lease);
        // The real time, even while liveness time is frozen: this heartbeat is news.
        let now = self.inner.clock.now();
        let policy = **self.inner.policy.load();
        let answer = slot
            .apply(|t| t.heartbeat(id, &lease_hash, connections, now, &policy))
            .map_err(|e| lease_error(e, service, id))?;
        slot.counters.heartbeats.increment(1);
        if answer.shed > 0 {
            slot.counters.shed_hints.increment(1);
            slot.counters.shed_connections.increment(answer.shed);
        }
        Ok(answer)
    }

    /// Drains an instance: it stays registered but is never handed out again.
    ///
    /// # Errors
    /// [`HubError`]; nothing changed.
    pub async fn drain(
        &self,
        service: &str,
        id: &str,
        evacuate_per_sec: Option<u32>,
        who: Authority<'_>,
    ) -> Result<InstanceView, HubError> {
        let deadline = deadline();
        let slot = self.slot(service).ok_or_else(|| unknown(service, id))?;
        let target = Arc::clone(&slot);
        let hub = self.clone();
        let drained = id.to_owned();
        let then: AfterCommit = Box::new(move |done| {
            if matches!(done, Done::Drained(true)) {
                let now = hub.now();
                target.apply(|t| t.drain(&drained, evacuate_per_sec, now));
            }
        });
        let write = Write::Drain {
            service: service.to_owned(),
            id: id.to_owned(),
            evacuate_per_sec,
        };
        let check = || self.authorize(&slot, service, id, who);
        let pending = self
            .queue(&slot, deadline, Some(&check), write, then)
            .await?;
        let found = self
            .inner
            .health
            .write("drain", deadline, pending.done())
            .await
            .and_then(Done::drained)?;
        if !found {
            return Err(unknown(service, id));
        }
        let now = self.now();
        slot.lock()
            .view(id, now)
            .ok_or_else(|| unknown(service, id))
    }

    /// Deregisters an instance; it disappears from every answer at once.
    ///
    /// # Errors
    /// [`HubError`]; nothing changed.
    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
        who: Authority<'_>,
    ) -> Result<(), HubError> {
        let deadline = deadline();
        let slot = self.slot(service).ok_or_else(|| unknown(service, id))?;
        let target = Arc::clone(&slot);
        let removed = id.to_owned();
        let then: AfterCommit = Box::new(move |_| {
            target.apply(|t| t.remove(&removed));
        });
        let write = Write::Delete {
            service: service.to_owned(),
            ids: vec![id.to_owned()],
        };
        let check = || self.authorize(&slot, service, id, who);
        let pending = self
            .queue(&slot, deadline, Some(&check), write, then)
            .await?;
        self.inner
            .health
            .write("deregister", deadline, pending.done())
            .await
            .and_then(Done::deleted)?;
        metrics::counter!(names::REMOVALS, "service" => service.to_owned(), "reason" => "deregistered")
            .increment(1);
        drop(slot);
        self.drop_if_unused(service);
        Ok(())
    }

    fn authorize(
        &self,
        slot: &ServiceSlot,
        service: &str,
        id: &str,
        who: Authority<'_>,
    ) -> Result<(), HubError> {
        let table = slot.lock();
        match who {
            Authority::Admin if table.get(id).is_some() => Ok(()),
            Authority::Admin => Err(unknown(service, id)),
            Authority::Lease(lease) => table
                .check_lease(id, &lease::hash(lease))
                .map_err(|e| lease_error(e, service, id)),
        }
    }
}
