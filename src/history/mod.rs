//! The dashboard's history (`GET /v1/history`): one sample per `[dashboard]
//! history_sample_secs` of each service's totals (connections, instances up, draining
//! and expired, hand-outs, shed hints) and of each instance's connections, for the
//! last `history_minutes`, in memory only.
//!
//! Bounded whatever the fleet: every series is a [`Ring`] whose memory is taken when
//! the series starts; at most [`MAX_SERVICES`] services, [`MAX_INSTANCES_PER_SERVICE`]
//! instance series per service and [`MAX_INSTANCES`] in all are kept (the rest are
//! counted as untracked); a series absent for the whole window is dropped, and a gone
//! one makes room for a new one. [`bound_bytes`] is the most it can hold.
//!
//! Owns the series, their bounds and the lock; `points.rs` packs a sample, `tick.rs`
//! takes one, `snapshot.rs` reads them out, `sampler.rs` feeds it from the hub. Must not
//! touch HTTP types, the store, or a table's lock beyond what a sample hands it.

mod points;
mod ring;
pub mod sampler;
mod snapshot;
mod tick;

use std::mem::size_of;
use std::sync::Mutex;
use std::time::Duration;

use points::{InstancePoint, ServicePoint};
pub use ring::Ring;
pub use snapshot::{InstanceHistory, ServiceHistory, Snapshot};
pub use tick::{ServiceTick, Tick};

use crate::locks::lock;
use crate::registry::validate::SERVICE_NAME_MAX;

/// Services with series of their own at most.
pub const MAX_SERVICES: usize = 64;
/// Instance series per service at most.
pub const MAX_INSTANCES_PER_SERVICE: usize = 32;
/// Instance series in all at most.
pub const MAX_INSTANCES: usize = 512;
/// Samples per series at most (`history_minutes × 60 / history_sample_secs`).
pub const MAX_SAMPLES: usize = 1440;
/// Longest instance id tracked (ids are 32 hex characters, static ones 23).
pub const ID_MAX: usize = 64;
/// Longest address tracked: a 253-byte host name, `:` and a port.
pub const ADDRESS_MAX: usize = 259;
/// Largest connection count an instance sample holds (30 bits; more is shown as this).
pub const INSTANCE_CONNECTIONS_MAX: u64 = (1 << 30) - 1;

#[derive(Debug)]
struct InstanceSeries {
    id: Box<str>,
    address: Box<str>,
    id_hash: u64,
    points: Ring<InstancePoint>,
    /// The last tick it was seen in.
    seen_at: u64,
}

#[derive(Debug)]
struct ServiceSeries {
    name: Box<str>,
    points: Ring<ServicePoint>,
    /// Capacity [`MAX_INSTANCES_PER_SERVICE`], taken with the series.
    instances: Vec<InstanceSeries>,
    seen_at: u64,
    /// Instances present at the last sample without a series of their own.
    untracked: u64,
}

#[derive(Debug)]
struct Store {
    samples: usize,
    /// Unix milliseconds of each sample.
    times: Ring<u64>,
    /// Samples taken so far; the current one while recording.
    tick: u64,
    /// Capacity [`MAX_SERVICES`].
    services: Vec<ServiceSeries>,
    /// Instance series in all.
    instances: usize,
    /// Services present at the last sample without series of their own.
    untracked_services: u64,
}

/// The history: cheap to share (`Arc`), one lock taken per sample and per read.
#[derive(Debug)]
pub struct History {
    sample_every: Duration,
    store: Mutex<Store>,
}

/// The most memory a history of `samples` per series holds, in bytes: every series
/// at its cap, every id and address at its longest (allocator overhead aside).
pub fn bound_bytes(samples: usize) -> usize {
    let samples = samples.max(1);
    let service = size_of::<ServiceSeries>()
        + SERVICE_NAME_MAX
        + samples * size_of::<ServicePoint>()
        + MAX_INSTANCES_PER_SERVICE * size_of::<InstanceSeries>();
    let instance = ID_MAX + ADDRESS_MAX + samples * size_of::<InstancePoint>();
    size_of::<History>()
        + samples * size_of::<u64>()
        + MAX_SERVICES * service
        + MAX_INSTANCES * instance
}

impl History {
    /// An empty history of `samples` per series (at least 1), one every `sample_every`.
    pub fn new(sample_every: Duration, samples: usize) -> History {
        let samples = samples.clamp(1, MAX_SAMPLES);
        History {
            sample_every,
            store: Mutex::new(Store {
                samples,
                times: Ring::new(samples, 0),
                tick: 0,
                services: Vec::with_capacity(MAX_SERVICES),
                instances: 0,
                untracked_services: 0,
            }),
        }
    }

    /// The time between two samples.
    pub fn sample_every(&self) -> Duration {
        self.sample_every
    }

    /// Samples per series at most.
    pub fn samples(&self) -> usize {
        lock(&self.store).samples
    }

    /// Takes one sample at `unix_ms`: `visit` hands over every service it sees (see
    /// [`Tick::service`]); a series it does not hand over is absent at this sample.
    pub fn record(&self, unix_ms: u64, visit: impl FnOnce(&mut Tick<'_>)) {
        let mut store = lock(&self.store);
        store.begin(unix_ms);
        visit(&mut Tick { store: &mut store });
        store.end();
    }

    /// Every service's series (or `service`'s alone), by name; instances by address.
    pub fn snapshot(&self, service: Option<&str>) -> Snapshot {
        let store = lock(&self.store);
        let mut services: Vec<ServiceHistory> = store
            .services
            .iter()
            .filter(|s| service.is_none_or(|name| *s.name == *name))
            .map(ServiceHistory::of)
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            samples: store.samples,
            times_ms: store.times.iter().collect(),
            services,
            untracked_services: if service.is_none() {
                store.untracked_services
            } else {
                0
            },
        }
    }
}

impl Store {
    fn begin(&mut self, unix_ms: u64) {
        self.tick += 1;
        self.times.push(unix_ms);
        self.untracked_services = 0;
    }

    /// Marks what was not seen absent, and drops the series absent for a whole window.
    fn end(&mut self) {
        let tick = self.tick;
        for service in &mut self.services {
            if service.seen_at < tick {
                service.points.push(ServicePoint::ABSENT);
                service.untracked = 0;
                for instance in &mut service.instances {
                    if instance.seen_at < tick {
                        instance.points.push(InstancePoint::ABSENT);
                    }
                }
            }
        }
        let window = self.samples as u64;
        let gone = |seen_at: u64| seen_at + window <= tick;
        let mut dropped = 0;
        for service in &mut self.services {
            let before = service.instances.len();
            service.instances.retain(|i| !gone(i.seen_at));
            dropped += before - service.instances.len();
        }
        self.services.retain(|s| {
            let keep = !gone(s.seen_at);
            if !keep {
                dropped += s.instances.len();
            }
            keep
        });
        self.instances -= dropped;
    }

    /// A new service series, aligned with the samples taken so far.
    fn new_service(&self, name: &str) -> ServiceSeries {
        ServiceSeries {
            name: name.into(),
            points: Ring::filled(
                self.samples,
                self.times.len().saturating_sub(1),
                ServicePoint::ABSENT,
            ),
            instances: Vec::with_capacity(MAX_INSTANCES_PER_SERVICE),
            // Not seen until its sample is finished: one never finished is absent.
            seen_at: 0,
            untracked: 0,
        }
    }

    /// The series of `name`, made (or made in place of a service gone at the last
    /// sample) when there is room.
    fn service_at(&mut self, name: &str) -> Option<usize> {
        if let Some(at) = self.services.iter().position(|s| *s.name == *name) {
            return Some(at);
        }
        if name.len() > SERVICE_NAME_MAX {
            return None;
        }
        if self.services.len() < MAX_SERVICES {
            let series = self.new_service(name);
            self.services.push(series);
            return Some(self.services.len() - 1);
        }
        let tick = self.tick;
        let (at, _) = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.seen_at + 1 < tick)
            .min_by_key(|(_, s)| s.seen_at)?;
        let series = self.new_service(name);
        let old = std::mem::replace(&mut self.services[at], series);
        self.instances -= old.instances.len();
        Some(at)
    }
}

#[cfg(test)]
impl History {
    /// What the series hold now, counted from their real capacities, as
    /// [`bound_bytes`] counts them at their caps.
    fn held_bytes(&self) -> usize {
        let store = lock(&self.store);
        let mut bytes = size_of::<History>() + store.times.capacity() * size_of::<u64>();
        bytes += store.services.capacity() * size_of::<ServiceSeries>();
        for service in &store.services {
            bytes += service.name.len() + service.points.capacity() * size_of::<ServicePoint>();
            bytes += service.instances.capacity() * size_of::<InstanceSeries>();
            for instance in &service.instances {
                bytes += instance.id.len()
                    + instance.address.len()
                    + instance.points.capacity() * size_of::<InstancePoint>();
            }
        }
        bytes
    }

    /// Every series' length equals the number of samples, and the counts match.
    fn assert_aligned(&self) {
        let store = lock(&self.store);
        let n = store.times.len();
        assert!(store.services.len() <= MAX_SERVICES);
        assert!(store.services.capacity() <= MAX_SERVICES);
        let mut total = 0;
        for service in &store.services {
            assert_eq!(service.points.len(), n, "service {}", service.name);
            assert!(service.instances.len() <= MAX_INSTANCES_PER_SERVICE);
            assert!(service.instances.capacity() <= MAX_INSTANCES_PER_SERVICE);
            for instance in &service.instances {
                assert_eq!(instance.points.len(), n, "instance {}", instance.id);
            }
            total += service.instances.len();
        }
        assert_eq!(total, store.instances);
        assert!(total <= MAX_INSTANCES);
    }
}

#[cfg(test)]
mod tests;
