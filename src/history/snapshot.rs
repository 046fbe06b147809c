//! The read side: what `GET /v1/history` is built from ([`Snapshot`], [`ServiceHistory`],
//! [`InstanceHistory`]), unpacked from the series. Must not touch the series, their
//! bounds or the lock (`mod.rs`), nor HTTP types.

use super::ServiceSeries;
use super::points::{InstancePoint, ServicePoint};

/// What [`History::snapshot`] answers: every series oldest first, aligned with
/// `times_ms` (a value per sample; `None` where the service or instance was absent).
///
/// [`History::snapshot`]: super::History::snapshot
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Samples per series at most.
    pub samples: usize,
    /// Unix milliseconds of each sample.
    pub times_ms: Vec<u64>,
    /// By name.
    pub services: Vec<ServiceHistory>,
    /// Services present at the last sample without series (over [`MAX_SERVICES`]).
    ///
    /// [`MAX_SERVICES`]: super::MAX_SERVICES
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
    pub(super) fn of(series: &ServiceSeries) -> ServiceHistory {
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
