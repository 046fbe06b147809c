//! What the admin endpoints read of one service: the listing (with a cache of each
//! instance's rendered fixed fields, so a big listing copies no instance), one
//! instance's view, and the service summary.

use super::ServiceTable;
use crate::registry::model::{Instance, Millis, State};

/// Counts shown in `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Live, not draining.
    pub up: u64,
    /// Live, draining.
    pub draining: u64,
    /// Expired, not yet removed.
    pub expired: u64,
    /// Sum of reported connections of live instances.
    pub connections: u64,
    /// Sum of pending hand-outs of live instances (the cluster's).
    pub pending: u64,
    /// Whether the service is in self-preservation.
    pub self_preservation: bool,
    /// Current version.
    pub version: u64,
}

/// A caller's cached rendering of an instance's fixed fields.
pub type Card = std::sync::Arc<str>;

/// One row of the admin listing: the cached card and the fields that move.
#[derive(Debug, Clone)]
pub struct CardRow {
    /// The rendering of the fixed fields.
    pub card: Card,
    /// State now.
    pub state: State,
    /// Drained.
    pub draining: bool,
    /// Reported connections.
    pub connections: u64,
    /// Pending hand-outs (the cluster's).
    pub pending: u64,
    /// Load now.
    pub load: f64,
    /// Milliseconds since the last heartbeat.
    pub last_heartbeat_ms_ago: Millis,
}

/// An instance as the admin listing shows it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// The instance.
    pub instance: Instance,
    /// Its state now.
    pub state: State,
    /// Its load now.
    pub load: f64,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms_ago: Millis,
}

impl InstanceView {
    fn of(instance: &Instance, now: Millis) -> Self {
        InstanceView {
            instance: instance.clone(),
            state: instance.state(now),
            load: instance.load(),
            last_heartbeat_ms_ago: instance.age(now),
        }
    }
}

impl ServiceTable {
    /// Every instance, all states, as cached cards and moving fields: the admin
    /// listing without copying any instance. `render` fills a missing card.
    pub fn listing_cards(
        &mut self,
        now: Millis,
        render: &dyn Fn(&Instance) -> Card,
    ) -> Vec<CardRow> {
        self.slots
            .iter_mut()
            .flatten()
            .map(|entry| {
                let card = entry
                    .card
                    .get_or_insert_with(|| render(&entry.instance))
                    .clone();
                let i = &entry.instance;
                CardRow {
                    card,
                    state: i.state(now),
                    draining: i.draining,
                    connections: i.connections,
                    pending: i.pending(),
                    load: i.load(),
                    last_heartbeat_ms_ago: i.age(now),
                }
            })
            .collect()
    }

    /// Every instance, all states, in registration order of their slots.
    pub fn listing(&self, now: Millis) -> Vec<InstanceView> {
        self.slots
            .iter()
            .flatten()
            .map(|entry| InstanceView::of(&entry.instance, now))
            .collect()
    }

    /// One instance as the listing shows it.
    pub fn view(&self, id: &str, now: Millis) -> Option<InstanceView> {
        self.get(id).map(|instance| InstanceView::of(instance, now))
    }

    /// The counts of `GET /v1/services`.
    pub fn summary(&self, now: Millis) -> ServiceSummary {
        let mut summary = ServiceSummary {
            name: self.name.clone(),
            up: 0,
            draining: 0,
            expired: 0,
            connections: 0,
            pending: 0,
            self_preservation: self.self_preservation(),
            version: self.version,
        };
        for entry in self.slots.iter().flatten() {
            match entry.instance.state(now) {
                State::Up => summary.up += 1,
                State::Draining => summary.draining += 1,
                State::Expired => summary.expired += 1,
            }
            if entry.instance.is_live(now) {
                summary.connections = summary
                    .connections
                    .saturating_add(entry.instance.connections);
                summary.pending = summary.pending.saturating_add(entry.instance.pending());
            }
        }
        summary
    }
}
