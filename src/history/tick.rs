//! The write side: one sample being taken ([`Tick`]), one service's part of it
//! ([`ServiceTick`]), and which new instances get a series. Must not touch the
//! read-side shape (`snapshot.rs`), HTTP types, the store, or a table's lock.

use super::points::{InstancePoint, ServicePoint};
use super::{
    ADDRESS_MAX, ID_MAX, InstanceSeries, MAX_INSTANCES, MAX_INSTANCES_PER_SERVICE, Ring, Store,
};
use crate::registry::State;
use crate::registry::table::Figures;

/// One sample being taken.
#[derive(Debug)]
pub struct Tick<'a> {
    pub(super) store: &'a mut Store,
}

impl Tick<'_> {
    /// The sample of service `name`: hand it each instance, then its figures
    /// ([`ServiceTick::finish`]). Over [`MAX_SERVICES`] (and no gone service to make
    /// room) the service is counted as untracked and what it is handed is dropped.
    ///
    /// [`MAX_SERVICES`]: super::MAX_SERVICES
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
