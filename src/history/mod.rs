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
//! Owns the series and their bounds; `sampler.rs` feeds it from the hub. Must not
//! touch HTTP types, the store, or a table's lock beyond what a sample hands it.

mod ring;
pub mod sampler;

use std::mem::size_of;
use std::sync::Mutex;
use std::time::Duration;

pub use ring::Ring;

use crate::locks::lock;
use crate::registry::State;
use crate::registry::table::Figures;
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

/// One service at one sample. `up == u32::MAX`: the service had no instance then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServicePoint {
    connections: u64,
    up: u32,
    draining: u32,
    expired: u32,
    hand_outs: u32,
    shed_hints: u32,
    shed_connections: u32,
}

impl ServicePoint {
    const ABSENT: ServicePoint = ServicePoint {
        connections: 0,
        up: u32::MAX,
        draining: 0,
        expired: 0,
        hand_outs: 0,
        shed_hints: 0,
        shed_connections: 0,
    };

    fn of(figures: &Figures) -> ServicePoint {
        // u32::MAX is the absent mark: a count saturates one below it.
        let count = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).min(u32::MAX - 1);
        ServicePoint {
            connections: figures.connections,
            up: count(figures.up),
            draining: count(figures.draining),
            expired: count(figures.expired),
            hand_outs: count(figures.activity.hand_outs),
            shed_hints: count(figures.activity.shed_hints),
            shed_connections: count(figures.activity.shed_connections),
        }
    }

    fn present(self) -> bool {
        self.up != u32::MAX
    }
}

/// One instance at one sample, in 4 bytes: its state in the top 2 bits (0: absent,
/// 1: up, 2: draining, 3: expired), its reported connections in the other 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InstancePoint(u32);

impl InstancePoint {
    const ABSENT: InstancePoint = InstancePoint(0);

    fn new(connections: u64, state: State) -> InstancePoint {
        let code: u32 = match state {
            State::Up => 1,
            State::Draining => 2,
            State::Expired => 3,
        };
        let connections =
            u32::try_from(connections.min(INSTANCE_CONNECTIONS_MAX)).expect("30 bits fit in a u32");
        InstancePoint(code << 30 | connections)
    }

    /// `-` absent, `u` up, `d` draining, `e` expired.
    fn state_char(self) -> char {
        match self.0 >> 30 {
            0 => '-',
            1 => 'u',
            2 => 'd',
            _ => 'e',
        }
    }

    /// The reported count while live (up or draining); none when absent or expired.
    fn connections(self) -> Option<u64> {
        matches!(self.0 >> 30, 1 | 2).then_some(u64::from(self.0 & INSTANCE_CONNECTIONS_MAX as u32))
    }
}

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

/// One sample being taken.
#[derive(Debug)]
pub struct Tick<'a> {
    store: &'a mut Store,
}

impl Tick<'_> {
    /// The sample of service `name`: hand it each instance, then its figures
    /// ([`ServiceTick::finish`]). Over [`MAX_SERVICES`] (and no gone service to make
    /// room) the service is counted as untracked and what it is handed is dropped.
    pub fn service(&mut self, name: &str) -> ServiceTick<'_> {
        let at = self.store.service_at(name);
        if at.is_none() {
            self.store.untracked_services += 1;
        }
        let tick = self.store.tick;
        // New instances are only copied while one could get a series.
        let room = at.is_some_and(|at| {
            let service = &self.store.services[at];
            (service.instances.len() < MAX_INSTANCES_PER_SERVICE
                && self.store.instances < MAX_INSTANCES)
                || service.instances.iter().any(|i| i.seen_at + 1 < tick)
        });
        ServiceTick {
            store: self.store,
            at,
            room,
            candidates: Vec::new(),
            untracked: 0,
        }
    }
}

/// A new instance met in a sample, waiting for the service's end to get a series.
#[derive(Debug)]
struct Candidate {
    id: Box<str>,
    address: Box<str>,
    id_hash: u64,
    point: InstancePoint,
}

/// One service's part of a sample.
#[derive(Debug)]
pub struct ServiceTick<'a> {
    store: &'a mut Store,
    at: Option<usize>,
    room: bool,
    candidates: Vec<Candidate>,
    untracked: u64,
}

impl ServiceTick<'_> {
    /// One instance of the service, as the table holds it now.
    pub fn instance(&mut self, id: &str, address: &str, connections: u64, state: State) {
        let Some(at) = self.at else {
            return;
        };
        let tick = self.store.tick;
        let point = InstancePoint::new(connections, state);
        let id_hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        let service = &mut self.store.services[at];
        if let Some(series) = service
            .instances
            .iter_mut()
            .find(|i| i.id_hash == id_hash && *i.id == *id)
        {
            if series.seen_at < tick {
                series.seen_at = tick;
                series.points.push(point);
            }
            return;
        }
        let fits = id.len() <= ID_MAX && address.len() <= ADDRESS_MAX;
        if self.room && fits && self.candidates.len() < MAX_INSTANCES_PER_SERVICE {
            self.candidates.push(Candidate {
                id: id.into(),
                address: address.into(),
                id_hash,
                point,
            });
        } else {
            self.untracked += 1;
        }
    }

    /// The service's figures: ends its part of the sample. The instances it was not
    /// handed are absent; new ones get a series while there is room, or take the place
    /// of the one gone longest.
    pub fn finish(mut self, figures: &Figures) {
        let Some(at) = self.at else {
            return;
        };
        let tick = self.store.tick;
        let samples = self.store.samples;
        let aligned = self.store.times.len().saturating_sub(1);
        let service = &mut self.store.services[at];
        if service.seen_at == tick {
            // Handed over twice in one sample: the first one stands.
            return;
        }
        for instance in &mut service.instances {
            if instance.seen_at < tick {
                instance.points.push(InstancePoint::ABSENT);
            }
        }
        for candidate in self.candidates.drain(..) {
            let mut points = Ring::filled(samples, aligned, InstancePoint::ABSENT);
            points.push(candidate.point);
            let series = InstanceSeries {
                id: candidate.id,
                address: candidate.address,
                id_hash: candidate.id_hash,
                points,
                seen_at: tick,
            };
            if service.instances.len() < MAX_INSTANCES_PER_SERVICE
                && self.store.instances < MAX_INSTANCES
            {
                service.instances.push(series);
                self.store.instances += 1;
                continue;
            }
            let gone_longest = service
                .instances
                .iter_mut()
                .filter(|i| i.seen_at < tick)
                .min_by_key(|i| i.seen_at);
            match gone_longest {
                Some(slot) => *slot = series,
                None => self.untracked += 1,
            }
        }
        service.points.push(ServicePoint::of(figures));
        service.seen_at = tick;
        service.untracked = self.untracked;
    }
}

/// What [`History::snapshot`] answers: every series oldest first, aligned with
/// `times_ms` (a value per sample; `None` where the service or instance was absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Samples per series at most.
    pub samples: usize,
    /// Unix milliseconds of each sample.
    pub times_ms: Vec<u64>,
    /// By name.
    pub services: Vec<ServiceHistory>,
    /// Services present at the last sample without series (over [`MAX_SERVICES`]).
    pub untracked_services: u64,
}

/// One service's series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHistory {
    /// Service name.
    pub name: String,
    /// Reported connections of live instances.
    pub connections: Vec<Option<u64>>,
    /// Instances live and not draining.
    pub up: Vec<Option<u64>>,
    /// Instances draining.
    pub draining: Vec<Option<u64>>,
    /// Instances expired, not yet removed.
    pub expired: Vec<Option<u64>>,
    /// Hand-outs in the interval that ends at each sample.
    pub hand_outs: Vec<Option<u64>>,
    /// Heartbeat answers with `shed` > 0 in the interval.
    pub shed_hints: Vec<Option<u64>>,
    /// Connections those answers asked to close.
    pub shed_connections: Vec<Option<u64>>,
    /// By address.
    pub instances: Vec<InstanceHistory>,
    /// Instances present at the last sample without a series of their own.
    pub untracked_instances: u64,
}

impl ServiceHistory {
    fn of(series: &ServiceSeries) -> ServiceHistory {
        let field = |f: fn(&ServicePoint) -> u64| -> Vec<Option<u64>> {
            series
                .points
                .iter()
                .map(|p| p.present().then(|| f(&p)))
                .collect()
        };
        let mut instances: Vec<InstanceHistory> = series
            .instances
            .iter()
            .map(|i| InstanceHistory {
                id: i.id.to_string(),
                address: i.address.to_string(),
                connections: i.points.iter().map(InstancePoint::connections).collect(),
                states: i.points.iter().map(InstancePoint::state_char).collect(),
            })
            .collect();
        instances.sort_by(|a, b| a.address.cmp(&b.address).then(a.id.cmp(&b.id)));
        ServiceHistory {
            name: series.name.to_string(),
            connections: field(|p| p.connections),
            up: field(|p| u64::from(p.up)),
            draining: field(|p| u64::from(p.draining)),
            expired: field(|p| u64::from(p.expired)),
            hand_outs: field(|p| u64::from(p.hand_outs)),
            shed_hints: field(|p| u64::from(p.shed_hints)),
            shed_connections: field(|p| u64::from(p.shed_connections)),
            instances,
            untracked_instances: series.untracked,
        }
    }
}

/// One instance's series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHistory {
    /// Instance id.
    pub id: String,
    /// `host:port` (or `unix:/path`).
    pub address: String,
    /// Reported connections while up or draining.
    pub connections: Vec<Option<u64>>,
    /// One character per sample: `-` absent, `u` up, `d` draining, `e` expired.
    pub states: String,
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
