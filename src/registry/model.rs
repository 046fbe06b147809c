//! Domain types of the registry: what an instance is, independent of HTTP and SQL.
//!
//! Owns the instance record and its derived quantities (state, load). Must not touch
//! I/O: times are plain milliseconds handed in by the caller.

use std::collections::BTreeMap;

pub use super::liveness::Millis;

/// What a backend says about itself when it registers. Validated before it gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// `host:port`, canonical form (IPv6 in brackets, hostnames lower-case).
    pub address: String,
    /// Relative capacity, 1..=1000.
    pub weight: u32,
    /// Connections at which the instance is ranked last.
    pub max_connections: Option<u64>,
    /// Locality label for `?zone=` preference.
    pub zone: Option<String>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Free-form key/values, at most 32 entries and 4 KiB.
    pub metadata: BTreeMap<String, String>,
    /// Seconds without heartbeat after which the instance expires.
    pub ttl_secs: u32,
}

impl InstanceSpec {
    /// The heartbeat period advertised to the backend: a third of the TTL, at least 1 s.
    pub fn heartbeat_secs(&self) -> u32 {
        (self.ttl_secs / 3).max(1)
    }

    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> Millis {
        u64::from(self.ttl_secs) * 1000
    }
}

/// SHA-256 of a lease secret; the clear lease is only ever held by the backend.
pub type LeaseHash = [u8; 32];

/// Liveness state shown in the admin listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Heartbeating and handed out.
    Up,
    /// Heartbeating but never handed out again.
    Draining,
    /// No heartbeat within `ttl_secs`.
    Expired,
}

/// Where an instance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Registered over the HTTP API; heartbeats itself; stored.
    #[default]
    Registered,
    /// From `[[static]]` in the config file; health-checked by the forwarder; never
    /// stored or removed.
    Static,
}

/// One registered backend as the in-memory table holds it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable id, kept across re-registration of the same address.
    pub id: String,
    /// The registered fields.
    pub spec: InstanceSpec,
    /// Hash of the current lease.
    pub lease_hash: LeaseHash,
    /// Set by drain; cleared by re-registration.
    pub draining: bool,
    /// Paced evacuation of a drained instance: connections per second it is asked to
    /// close (SPEC section 3); cleared by re-registration.
    pub evacuate_per_sec: Option<u32>,
    /// Live connections as last reported.
    pub connections: u64,
    /// Hand-outs since the last heartbeat.
    pub pending_recent: u64,
    /// Hand-outs from before the last heartbeat not yet absorbed by a reported count.
    pub pending_older: u64,
    /// Pending hand-outs of the other cluster nodes, as they last published them.
    pub remote_pending: u64,
    /// Last heartbeat (or registration, or restart) on the monotonic clock.
    pub last_seen: Millis,
    /// Registration time, Unix milliseconds (wall clock, for people).
    pub registered_at_unix_ms: u64,
    /// Registered or static.
    pub origin: Origin,
    /// A static instance whose health check fails; never handed out meanwhile.
    pub down: bool,
    /// Reachable only through the forwarder (a `unix:` static instance): ranked for
    /// forwarded connections, never handed out by `/servers`.
    pub forward_only: bool,
}

impl Instance {
    /// Hand-outs not yet visible in the reported count, the whole cluster's.
    pub fn pending(&self) -> u64 {
        self.local_pending().saturating_add(self.remote_pending)
    }

    /// This node's own hand-outs not yet visible in the reported count.
    pub fn local_pending(&self) -> u64 {
        self.pending_recent.saturating_add(self.pending_older)
    }

    /// Connections plus pending hand-outs: what the instance is assumed to carry now.
    pub fn assumed_connections(&self) -> u64 {
        self.connections.saturating_add(self.pending())
    }

    /// `(connections + pending) / weight`.
    pub fn load(&self) -> f64 {
        crate::registry::rank::load(self.assumed_connections(), self.spec.weight)
    }

    /// Whether the instance is at or over its `max_connections`.
    pub fn over_cap(&self) -> bool {
        crate::registry::rank::over_cap(self.assumed_connections(), self.spec.max_connections)
    }

    /// Milliseconds since the last heartbeat.
    pub fn age(&self, now: Millis) -> Millis {
        now.saturating_sub(self.last_seen)
    }

    /// Whether the last heartbeat is within `ttl_secs`.
    pub fn is_live(&self, now: Millis) -> bool {
        !self.down && crate::registry::liveness::is_live(self.age(now), self.spec.ttl_ms())
    }

    /// The state shown to operators.
    pub fn state(&self, now: Millis) -> State {
        if !self.is_live(now) {
            State::Expired
        } else if self.draining {
            State::Draining
        } else {
            State::Up
        }
    }

    /// Records a heartbeat: the new count absorbs pending hand-outs, oldest first, and
    /// hand-outs older than one heartbeat period that never showed up are forgotten.
    pub fn absorb_heartbeat(&mut self, connections: Option<u64>, now: Millis) {
        if let Some(reported) = connections {
            let mut absorbed = reported.saturating_sub(self.connections);
            let from_older = absorbed.min(self.pending_older);
            absorbed -= from_older;
            let from_recent = absorbed.min(self.pending_recent);
            // What is left of `recent` had less than a period to connect: keep it one more.
            self.pending_older = self.pending_recent - from_recent;
            self.pending_recent = 0;
            self.connections = reported;
        }
        self.last_seen = now;
    }
}
