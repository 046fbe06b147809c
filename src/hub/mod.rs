//! The registry as the rest of the program sees it: applies each command to the store
//! and the in-memory tables in the right order, and wakes blocking queries.
//!
//! Owns the locks (one table mutex and one write mutex per service) and the clock.
//! Writes are durable in the store before they change memory: they go through the
//! store's group commit, whose writer applies them to memory in commit order;
//! heartbeats and hand-outs stay in memory and reach the store in batches. Knows no
//! HTTP, no column encoding (`store::encoding`) and no cluster protocol: `cluster/`
//! drives a hub through the primitives of `cluster_ops.rs`.
//!
//! The rooms: this file holds the hub's state and the service slots; `commands.rs`
//! the writes (register, heartbeat, drain, deregister) and the order they keep;
//! `reads.rs` the answers and the ranking adapters (`/servers`, the forwarder, DNS,
//! listings, blocking waits); `upkeep.rs` the sweep and the heartbeat flush;
//! `cluster_ops.rs` the memory-only primitives a cluster node drives; `samples.rs` each
//! table in turn for the dashboard's history.

mod cluster_ops;
mod commands;
mod reads;
mod samples;
mod upkeep;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::locks::lock;
use crate::metrics as names;
use crate::registry::Millis;
use crate::registry::table::LeaseError;
use crate::registry::{RebalancePolicy, ServiceTable};
use crate::store::group::GroupCommit;
use crate::store::health::StoreHealth;
use crate::store::{BeatRecord, Store, StoreError};

/// Rounds of a blocking query on a name with no service (each ends on a creation).
const MAX_WAIT_ROUNDS: usize = 10_000;

/// The `service` label of `/servers` answers for a service that has no instances.
pub const UNKNOWN_SERVICE: &str = "_unknown";

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
    /// Whether the store can write, and the timing of its writes.
    health: StoreHealth,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("services", &self.inner.services.len())
            .finish_non_exhaustive()
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
                health: StoreHealth::default(),
            }),
        }
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
