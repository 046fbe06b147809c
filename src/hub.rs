//! The registry as the rest of the program sees it: applies each command to the store
//! and the in-memory tables in the right order, and wakes blocking queries.
//!
//! Owns the locks (one table mutex and one write mutex per service) and the clock.
//! Writes are durable in the store before they change memory: they go through the
//! store's group commit, whose writer applies them to memory in commit order;
//! heartbeats and hand-outs stay in memory and reach the store in batches
//! (`flush_beats`). Knows no HTTP and no cluster protocol: `cluster/` drives a hub
//! through the per-service primitives at the end of this file (apply a synced row,
//! forget an id, hold liveness time, allow removal, pending hand-outs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::lease;
use crate::metrics as names;
use crate::registry::Millis;
use crate::registry::table::{
    self, HeartbeatAnswer, InstanceView, LeaseError, PreservationEvent, RankQuery, Ranked,
    RankedServer, ServiceSummary,
};
use crate::registry::{Instance, InstanceSpec, Origin, RebalancePolicy, ServiceTable, validate};
use crate::store::group::{AfterCommit, Done, GroupCommit, Pending, Write};
use crate::store::{BeatRecord, InstanceRecord, Store, StoreError, bounded};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rounds of a blocking query on a name with no service (each ends on a creation).
const MAX_WAIT_ROUNDS: usize = 10_000;

/// Synced heartbeats applied under one hold of a table lock.
const BEATS_PER_LOCK: usize = 256;

/// The `service` label of `/servers` answers for a service that has no instances.
pub const UNKNOWN_SERVICE: &str = "_unknown";

/// The longest a store call may take before the request fails with 503.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a registry command was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No such instance in the service.
    #[error("no instance {id} in service {service}")]
    UnknownInstance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// The lease does not match.
    #[error("the lease does not match instance {0}")]
    BadLease(String),
    /// The store failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks for a lease-protected change.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// The backend, proving itself with its lease.
    Lease(&'a str),
    /// An operator with the admin token (or no admin token configured).
    Admin,
}

/// The answer to a registration. `Debug` leaves the lease out.
#[derive(Clone)]
pub struct Registered {
    /// Instance id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The new lease, in clear, shown only here.
    pub lease: String,
    /// TTL.
    pub ttl_secs: u32,
    /// Advised heartbeat period.
    pub heartbeat_secs: u32,
    /// False when the address was already registered.
    pub created: bool,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("ttl_secs", &self.ttl_secs)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// A backend chosen for a forwarded connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    /// Instance id.
    pub id: String,
    /// `host:port` to connect to, or `unix:/path` (a static instance's socket).
    pub address: String,
}

/// One service's lock-protected state.
struct ServiceSlot {
    table: Mutex<ServiceTable>,
    /// Orders how this service's writes enter the store's queue. Held to queue a
    /// write, not while it commits; see [`Hub::register`] for why that keeps order.
    writes: tokio::sync::Mutex<()>,
    /// This service's writes queued and not yet applied to the table (or dropped).
    queued: watch::Sender<usize>,
    version: watch::Sender<u64>,
    counters: names::ServiceCounters,
}

impl ServiceSlot {
    fn lock(&self) -> MutexGuard<'_, ServiceTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters more than stopping the whole registry would.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the table and wakes blocking queries if the version moved.
    fn apply<R>(&self, f: impl FnOnce(&mut ServiceTable) -> R) -> R {
        let (result, version) = {
            let mut table = self.lock();
            let result = f(&mut table);
            (result, table.version())
        };
        self.version.send_if_modified(|seen| {
            let moved = *seen != version;
            *seen = version;
            moved
        });
        result
    }
}

/// Cheap-to-clone handle on the registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    services: DashMap<String, Arc<ServiceSlot>>,
    store: Arc<dyn Store>,
    /// The store's one writer of registrations, drains and deletions.
    writer: GroupCommit,
    /// While liveness time is held (a cluster node that lost its store), it stands
    /// still here, so the last known state keeps being answered; `u64::MAX` otherwise.
    held_at: AtomicU64,
    /// Whether this hub removes expired instances (a cluster leaves it to one node).
    may_remove: AtomicBool,
    clock: Clock,
    /// Swapped whole on reload; read once per heartbeat.
    policy: arc_swap::ArcSwap<RebalancePolicy>,
    /// Heartbeats whose batch failed to persist, retried with the next batch.
    unsaved: Mutex<BTreeMap<String, BeatRecord>>,
    /// Seed of equal-load tie-breaking: 0 alone, random per node in a cluster.
    tiebreak_seed: u64,
    /// Counts service creations: wakes blocking queries on names that had no
    /// service yet (they hold no state of their own while they wait).
    created: watch::Sender<u64>,
    /// The last write to the store failed: `/readyz` answers 503 until a write (or
    /// its probe) succeeds again.
    write_failing: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("services", &self.inner.services.len())
            .finish_non_exhaustive()
    }
}

async fn timed<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    bounded(STORE_TIMEOUT, call).await
}

/// When a store write begun now must have been answered.
fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + STORE_TIMEOUT
}

/// Waits until every queued write of `slot`'s service is applied to its table (or
/// dropped). Called under the service's write mutex, so nothing new is queued
/// meanwhile and the wait ends within the batches already queued.
async fn settle(slot: &ServiceSlot, deadline: tokio::time::Instant) -> Result<(), StoreError> {
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
    /// A registry over `store` with an empty memory; call [`Hub::restore`] next (or
    /// let a cluster node restore it). Starts the store's writer: call inside a tokio
    /// runtime. `tiebreak_seed` orders equal loads: 0 for a single node, random per
    /// node in a cluster so nodes do not all pick alike.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        policy: RebalancePolicy,
        tiebreak_seed: u64,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                services: DashMap::new(),
                writer: GroupCommit::start(Arc::clone(&store)),
                store,
                held_at: AtomicU64::new(u64::MAX),
                may_remove: AtomicBool::new(true),
                clock,
                policy: arc_swap::ArcSwap::from_pointee(policy),
                unsaved: Mutex::new(BTreeMap::new()),
                tiebreak_seed,
                created: watch::Sender::new(0),
                write_failing: AtomicBool::new(false),
            }),
        }
    }

    /// Runs a store write until `deadline` and records whether the store can write,
    /// for `/readyz`.
    async fn write<T>(
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
        if self.inner.write_failing.swap(failing, Ordering::Relaxed) != failing {
            if failing {
                tracing::warn!("store writes failing: not ready until they succeed again");
            } else {
                tracing::info!("store writes succeed again");
            }
        }
        result
    }

    /// Liveness time: the monotonic clock, or the instant it is held at.
    fn now(&self) -> Millis {
        self.inner
            .clock
            .now()
            .min(self.inner.held_at.load(Ordering::Relaxed))
    }

    /// Whether this hub removes expired instances.
    fn may_remove(&self) -> bool {
        self.inner.may_remove.load(Ordering::Relaxed)
    }

    /// Every service's slot, taken out of the map so no map lock is held meanwhile.
    fn all_slots(&self) -> Vec<Arc<ServiceSlot>> {
        self.inner
            .services
            .iter()
            .map(|s| Arc::clone(s.value()))
            .collect()
    }

    fn slot(&self, service: &str) -> Option<Arc<ServiceSlot>> {
        self.inner.services.get(service).map(|s| Arc::clone(&s))
    }

    fn slot_or_create(&self, service: &str) -> Arc<ServiceSlot> {
        if let Some(slot) = self.slot(service) {
            return slot;
        }
        let entry = self
            .inner
            .services
            .entry(service.to_owned())
            .or_insert_with(|| {
                self.inner.created.send_modify(|n| *n = n.wrapping_add(1));
                Arc::new(ServiceSlot {
                    table: Mutex::new(ServiceTable::with_tiebreak_seed(
                        service,
                        self.inner.tiebreak_seed,
                    )),
                    writes: tokio::sync::Mutex::new(()),
                    queued: watch::Sender::new(0),
                    version: watch::Sender::new(0),
                    counters: names::ServiceCounters::new(service),
                })
            });
        Arc::clone(&entry)
    }

    /// Drops a service that has no instance left and that nobody is using (no
    /// request or sweep holds its slot): reads of unknown names, failed
    /// registrations and removals leave nothing behind. Its blocking queries wake
    /// (their watch closes) and answer the empty list.
    fn drop_if_unused(&self, service: &str) {
        self.inner.services.remove_if(service, |_, slot| {
            Arc::strong_count(slot) == 1 && slot.lock().is_empty()
        });
    }

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
            match instance_from_record(record, now) {
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
    async fn submit(
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
        let record = InstanceRecord {
            id: lease::new_id(),
            service: service.to_owned(),
            address: spec.address.clone(),
            weight: spec.weight,
            max_connections: spec.max_connections,
            zone: spec.zone.clone(),
            tags_json: serde_json::to_string(&spec.tags).expect("strings serialize"),
            metadata_json: serde_json::to_string(&spec.metadata).expect("strings serialize"),
            ttl_secs: spec.ttl_secs,
            lease_hash: hex::encode(lease_hash),
            draining: false,
            evacuate_per_sec: None,
            connections: 0,
            registered_at_ms: now_unix,
            last_heartbeat_ms: now_unix,
        };
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
        self.write("deregister", deadline, pending.done())
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

    /// Replaces the rebalancing policy (a reload).
    pub fn set_policy(&self, policy: RebalancePolicy) {
        self.inner.policy.store(Arc::new(policy));
    }

    /// Takes a static instance out of the registry (a reload removed it).
    pub fn remove_static(&self, service: &str, id: &str) {
        self.forget(service, id);
        self.drop_if_unused(service);
    }

    /// How long clients should spread their reconnects over, for `/servers` answers.
    pub fn reconnect_jitter_ms(&self) -> u64 {
        self.inner.policy.load().reconnect_jitter_ms
    }

    /// Ranks a service for one answer, counting the hand-out of the first server.
    /// An unknown service answers an empty list.
    pub fn servers(&self, service: &str, query: &RankQuery<'_>) -> Ranked {
        let now = self.now();
        match self.slot(service) {
            Some(slot) => {
                slot.counters.servers_answers.increment(1);
                slot.apply(|t| t.rank(query, now))
            }
            // Not labelled by the asked name: anyone may ask for any name, and label
            // values must stay bounded.
            None => {
                metrics::counter!(names::SERVERS_ANSWERS, "service" => UNKNOWN_SERVICE)
                    .increment(1);
                Ranked {
                    version: 0,
                    servers: Vec::new(),
                    self_preservation: false,
                }
            }
        }
    }

    /// Candidates for one forwarded connection, best first, by the same ranking as
    /// `/servers`, without the backends `is_out` names; the first counts a hand-out.
    pub fn forward_candidates(
        &self,
        service: &str,
        key: Option<&[u8]>,
        limit: usize,
        is_out: &dyn Fn(&str) -> bool,
    ) -> Vec<ForwardTarget> {
        self.rank_without(service, key, limit, &|i| is_out(&i.spec.address))
            .map(|servers| {
                servers
                    .into_iter()
                    .map(|s| ForwardTarget {
                        id: s.id,
                        address: s.address,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses DNS hands out for a service, best first by the `/servers`
    /// ranking, among those `keep` accepts (the record type's address family); the
    /// first counts a hand-out. `None` when the service is unknown (`NXDOMAIN`).
    pub fn dns_addresses(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let exclude = |i: &Instance| i.forward_only || !keep(&i.spec.address);
        let servers = self.rank_without(service, None, limit, &exclude)?;
        Some(servers.into_iter().map(|s| s.address).collect())
    }

    /// [`Hub::dns_addresses`] handed to `each` address by address under the service's
    /// lock, nothing copied: the DNS hot path writes them into its answer. False when
    /// the service is unknown.
    pub fn dns_each(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(&str),
    ) -> bool {
        let Some(slot) = self.slot(service) else {
            return false;
        };
        let now = self.now();
        let query = RankQuery {
            limit,
            zone: None,
            key: None,
            tag: None,
        };
        let exclude = |i: &Instance| i.forward_only || !keep(&i.spec.address);
        slot.apply(|t| t.rank_each(&query, now, &exclude, &mut |i| each(&i.spec.address)));
        true
    }

    /// The ranking of one answer without the instances `exclude` names (any zone,
    /// any tag); the first counts a hand-out. `None` for an unknown service.
    fn rank_without(
        &self,
        service: &str,
        key: Option<&[u8]>,
        limit: usize,
        exclude: &dyn Fn(&Instance) -> bool,
    ) -> Option<Vec<RankedServer>> {
        let slot = self.slot(service)?;
        let now = self.now();
        let query = RankQuery {
            limit,
            zone: None,
            key,
            tag: None,
        };
        Some(
            slot.apply(|t| t.rank_excluding(&query, now, exclude))
                .servers,
        )
    }

    /// Counts one hand-out for an instance (the forwarder's retry on a later candidate).
    pub fn count_hand_out(&self, service: &str, id: &str) {
        if let Some(slot) = self.slot(service) {
            let now = self.now();
            slot.apply(|t| t.count_hand_out_of(id, now));
        }
    }

    /// Adds a static instance from the config file, in memory only, under an id
    /// derived from service and address (stable across restarts and nodes). It stays
    /// down until its first health check passes. A `unix:` one is forward-only.
    pub fn add_static(&self, service: &str, spec: InstanceSpec) -> String {
        let id = format!(
            "static-{:016x}",
            xxhash_rust::xxh3::xxh3_64(format!("{service}/{}", spec.address).as_bytes())
        );
        let now = self.now();
        // A device cannot reach a socket on this host's file system.
        let forward_only = validate::unix_socket_path(&spec.address).is_some();
        let mut instance = table::new_instance(
            id.clone(),
            spec,
            lease::hash(&lease::new_lease()),
            now,
            self.inner.clock.unix_now_ms(),
        );
        instance.origin = Origin::Static;
        instance.down = true;
        instance.forward_only = forward_only;
        self.slot_or_create(service)
            .apply(|t| t.upsert(instance, now));
        id
    }

    /// Records a static instance's health check and the forwarder's connection count.
    pub fn set_health(&self, service: &str, id: &str, up: bool, connections: u64) {
        if let Some(slot) = self.slot(service) {
            let now = self.now();
            slot.apply(|t| t.set_health(id, up, connections, now));
        }
    }

    /// Waits until the service's version differs from `since`, or `wait` passes.
    /// Costs a watch receiver, not a thread.
    ///
    /// A name with no service creates nothing: its version is 0, so the wait ends at
    /// once unless `since` is 0; then it waits for the service to appear.
    pub async fn wait_for_change(&self, service: &str, since: u64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        // Bounded: each round ends at the deadline or on a service creation, and a
        // round that finds the service ends the wait.
        for _ in 0..MAX_WAIT_ROUNDS {
            if let Some(slot) = self.slot(service) {
                // The receiver alone, not the slot: a service dropped meanwhile
                // closes the watch and ends the wait.
                let mut versions = slot.version.subscribe();
                drop(slot);
                let changed = versions.wait_for(|v| *v != since);
                let _ = tokio::time::timeout_at(deadline, changed).await;
                return;
            }
            if since != 0 {
                return;
            }
            let mut created = self.inner.created.subscribe();
            if self.slot(service).is_some() {
                continue;
            }
            if tokio::time::timeout_at(deadline, created.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The summary of every service (`default` always included), sorted by name.
    pub fn summaries(&self) -> Vec<ServiceSummary> {
        let now = self.now();
        let slots = self.all_slots();
        let mut summaries: Vec<ServiceSummary> =
            slots.iter().map(|s| s.lock().summary(now)).collect();
        if !summaries.iter().any(|s| s.name == "default") {
            // `default` exists implicitly, with nothing in it.
            summaries.push(ServiceTable::new("default").summary(now));
        }
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        summaries
    }

    /// Every instance of a service as cached cards (see
    /// [`ServiceTable::listing_cards`]); rows are taken under the lock, rendering of
    /// the answer happens outside it.
    pub fn listing_cards(
        &self,
        service: &str,
        render: &dyn Fn(&crate::registry::Instance) -> table::Card,
    ) -> Vec<table::CardRow> {
        let now = self.now();
        self.slot(service)
            .map(|slot| slot.lock().listing_cards(now, render))
            .unwrap_or_default()
    }

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
            if let Err(err) = self.write("remove", deadline, pending.done()).await {
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
        let limit = Duration::from_secs(1);
        bounded(limit, self.inner.store.ping()).await?;
        if self.inner.write_failing.load(Ordering::Relaxed) {
            // Reachable is not enough after a failed write (a full disk answers reads).
            bounded(limit, self.inner.store.probe_write()).await?;
            self.inner.write_failing.store(false, Ordering::Relaxed);
            tracing::info!("store writes succeed again");
        }
        Ok(())
    }

    /// Closes the store after the last flush.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }

    // Primitives for a cluster node (`cluster/`): memory-only changes that the
    // node's sync decides, and the two switches a shared store needs.

    /// The monotonic clock, not held: for what the node itself measures.
    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Liveness time as the tables see it (held or not).
    pub(crate) fn liveness_now(&self) -> Millis {
        self.now()
    }

    /// Sets whether this hub removes expired instances; true when it changed.
    pub(crate) fn set_may_remove(&self, allowed: bool) -> bool {
        self.inner.may_remove.swap(allowed, Ordering::Relaxed) != allowed
    }

    /// Holds liveness time at `at` (the last moment the shared store was known) and
    /// puts back what expired since; true when it was not held before.
    pub(crate) fn hold_time(&self, at: Millis) -> bool {
        let held = self
            .inner
            .held_at
            .compare_exchange(u64::MAX, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if held {
            for slot in self.all_slots() {
                slot.apply(|t| t.reindex_all(at));
            }
        }
        held
    }

    /// Lets liveness time run again; true when it was held.
    pub(crate) fn release_time(&self) -> bool {
        self.inner.held_at.swap(u64::MAX, Ordering::Relaxed) != u64::MAX
    }

    /// Applies an instance as another node stored it (memory only).
    pub(crate) fn apply_synced(&self, service: &str, instance: Instance) {
        let now = self.now();
        self.slot_or_create(service)
            .apply(|t| t.apply_synced(instance, now));
    }

    /// Applies heartbeats other nodes wrote (memory only), `(service, id, connections,
    /// age in ms)`: one table lock per service and [`BEATS_PER_LOCK`] beats, so a large
    /// batch never keeps a heartbeat waiting long. Returns how many changed an instance.
    pub(crate) fn apply_synced_beats(&self, beats: &[(&str, &str, u64, Millis)]) -> usize {
        let now = self.now();
        let mut changed = 0;
        for run in beats.chunk_by(|a, b| a.0 == b.0) {
            let Some(slot) = self.slot(run[0].0) else {
                continue;
            };
            for chunk in run.chunks(BEATS_PER_LOCK) {
                changed += slot.apply(|t| {
                    chunk
                        .iter()
                        .filter(|(_, id, conns, age)| {
                            t.apply_synced_beat(id, *conns, now.saturating_sub(*age), now)
                        })
                        .count()
                });
            }
        }
        changed
    }

    /// Forgets an instance that the shared store no longer has (memory only).
    pub(crate) fn forget(&self, service: &str, id: &str) {
        if let Some(slot) = self.slot(service) {
            slot.apply(|t| t.remove(id));
        }
    }

    /// The ids of every registered (not static) instance, by service.
    pub(crate) fn registered_ids(&self) -> Vec<(String, Vec<String>)> {
        self.all_slots()
            .iter()
            .map(|slot| {
                let table = slot.lock();
                let ids = table.registered_ids().map(str::to_owned).collect();
                (table.name().to_owned(), ids)
            })
            .collect()
    }

    /// This hub's own pending hand-outs, per instance id.
    pub(crate) fn local_pending(&self) -> Vec<(String, u64)> {
        let mut mine = Vec::new();
        for slot in self.all_slots() {
            mine.extend(slot.lock().local_pending());
        }
        mine
    }

    /// Sets the pending hand-outs the other nodes counted, per instance id.
    pub(crate) fn set_remote_pending(&self, remote: &HashMap<String, u64>) {
        let now = self.now();
        for slot in self.all_slots() {
            slot.apply(|t| t.set_remote_pending(remote, now));
        }
    }

    /// Sets the other nodes' pending hand-outs of the given instances only; returns,
    /// in the same order, whether some service here holds each id.
    pub(crate) fn set_remote_pending_of(&self, changes: &[(String, u64)]) -> Vec<bool> {
        let mut found = vec![false; changes.len()];
        if changes.is_empty() {
            return found;
        }
        let now = self.now();
        for slot in self.all_slots() {
            slot.apply(|t| t.set_remote_pending_of(changes, &mut found, now));
        }
        found
    }
}

fn unknown(service: &str, id: &str) -> HubError {
    HubError::UnknownInstance {
        service: service.to_owned(),
        id: id.to_owned(),
    }
}

fn lease_error(err: LeaseError, service: &str, id: &str) -> HubError {
    match err {
        LeaseError::UnknownInstance => unknown(service, id),
        LeaseError::BadLease => HubError::BadLease(id.to_owned()),
    }
}

/// The registry's instance for a stored record (a fresh lease of life from `now`).
///
/// # Errors
/// [`StoreError::Corrupt`] when a stored field cannot be read back.
pub(crate) fn instance_from_record(
    r: InstanceRecord,
    now: crate::registry::Millis,
) -> Result<crate::registry::Instance, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: r.id.clone(),
        reason: reason.to_owned(),
    };
    let lease_hash = lease::parse_hash(&r.lease_hash).ok_or_else(|| corrupt("bad lease hash"))?;
    let tags = serde_json::from_str(&r.tags_json).map_err(|_| corrupt("bad tags"))?;
    let metadata = serde_json::from_str(&r.metadata_json).map_err(|_| corrupt("bad metadata"))?;
    let spec = InstanceSpec {
        address: r.address.clone(),
        weight: r.weight,
        max_connections: r.max_connections,
        zone: r.zone.clone(),
        tags,
        metadata,
        ttl_secs: r.ttl_secs,
    };
    let mut instance = table::new_instance(r.id.clone(), spec, lease_hash, now, r.registered_at_ms);
    instance.draining = r.draining;
    instance.evacuate_per_sec = r.evacuate_per_sec;
    instance.connections = r.connections;
    Ok(instance)
}
