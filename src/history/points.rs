//! The packed per-sample points: one service's figures and one instance's state and
//! connections at one sample, and how each packs and unpacks. Must not touch the
//! series, their bounds or the lock (`mod.rs`), nor the read-side shape.

use super::INSTANCE_CONNECTIONS_MAX;
use crate::registry::State;
use crate::registry::table::Figures;

/// One service at one sample. `up == u32::MAX`: the service had no instance then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ServicePoint {
    pub(super) connections: u64,
    pub(super) up: u32,
    pub(super) draining: u32,
    pub(super) expired: u32,
    pub(super) hand_outs: u32,
    pub(super) shed_hints: u32,
    pub(super) shed_connections: u32,
}

impl ServicePoint {
    pub(super) const ABSENT: ServicePoint = ServicePoint {
        connections: 0,
        up: u32::MAX,
        draining: 0,
        expired: 0,
        hand_outs: 0,
        shed_hints: 0,
        shed_connections: 0,
    };

    pub(super) fn of(figures: &Figures) -> ServicePoint {
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

    pub(super) fn present(self) -> bool {
        self.up != u32::MAX
    }
}

/// One instance at one sample, in 4 bytes: its state in the top 2 bits (0: absent,
/// 1: up, 2: draining, 3: expired), its reported connections in the other 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InstancePoint(u32);

impl InstancePoint {
    pub(super) const ABSENT: InstancePoint = InstancePoint(0);

    pub(super) fn new(connections: u64, state: State) -> InstancePoint {
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
    pub(super) fn state_char(self) -> char {
        match self.0 >> 30 {
            0 => '-',
            1 => 'u',
            2 => 'd',
            _ => 'e',
        }
    }

    /// The reported count while live (up or draining); none when absent or expired.
    pub(super) fn connections(self) -> Option<u64> {
        matches!(self.0 >> 30, 1 | 2).then_some(u64::from(self.0 & INSTANCE_CONNECTIONS_MAX as u32))
    }
}
