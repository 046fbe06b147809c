//! The ranking shared by `/servers`, the forwarder and DNS: load, the over-cap rule,
//! the sort key, the bounded-load capacity, the balance of a service and the
//! rebalancing hint; the selection of an answer (`select.rs`: the ordered, bounded
//! candidate iterator and the keyed pick). The reference ordering the tests compare
//! the selection with is `reference.rs` (tests only).
//!
//! Pure functions only; the table keeps the indexes (ordered by [`RankKey`]) that the
//! selection walks.

pub mod select;

/// Bounded-load factor of the consistent-hash pick: the key's owner is skipped when
/// taking one more connection would put it above 1.25 × the mean load.
pub const BOUNDED_LOAD_FACTOR: f64 = 1.25;

/// `(connections + pending) / weight`; a weight of 0 is treated as 1.
pub fn load(assumed_connections: u64, weight: u32) -> f64 {
    assumed_connections as f64 / f64::from(weight.max(1))
}

/// Whether an instance at `assumed_connections` is at or over its cap.
pub fn over_cap(assumed_connections: u64, max_connections: Option<u64>) -> bool {
    max_connections.is_some_and(|max| assumed_connections >= max)
}

/// Sort key of an instance in a service's ranking: smaller is better.
///
/// Over-cap instances sort after every other, then lower load first; `tiebreak` (a hash
/// of the id) spreads equal loads deterministically and `slot` makes keys unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RankKey {
    /// At or over `max_connections`.
    pub over_cap: bool,
    /// Bit pattern of the non-negative load; orders like the float itself.
    pub load_bits: u64,
    /// Hash of the instance id.
    pub tiebreak: u64,
    /// The table slot, unique per instance.
    pub slot: u32,
}

impl RankKey {
    /// Builds the key of an instance.
    pub fn new(over_cap: bool, load: f64, tiebreak: u64, slot: u32) -> Self {
        // Loads are finite and >= 0, whose IEEE bit patterns order like the values.
        let load = if load.is_finite() && load > 0.0 {
            load
        } else {
            0.0
        };
        RankKey {
            over_cap,
            load_bits: load.to_bits(),
            tiebreak,
            slot,
        }
    }

    /// The load this key was built from.
    pub fn load(&self) -> f64 {
        f64::from_bits(self.load_bits)
    }
}

/// Totals of the instances that can be handed out, for mean-load decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of `connections + pending`.
    pub assumed_connections: u64,
    /// Sum of weights.
    pub weight: u64,
    /// Number of instances.
    pub count: u64,
}

impl Totals {
    /// The service's mean load: total assumed connections per unit of weight.
    pub fn mean_load(&self) -> f64 {
        if self.weight == 0 {
            0.0
        } else {
            self.assumed_connections as f64 / self.weight as f64
        }
    }
}

/// Whether an instance may take one more keyed connection under bounded-load hashing.
///
/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam): after the
/// hand-out, the instance must hold at most `factor` × its weighted share of the total,
/// rounded up to whole connections. Because the shares sum to `factor` × (total + 1),
/// some instance always fits, so the ring walk always ends.
pub fn fits_bound(assumed: u64, weight: u32, totals: &Totals, factor: f64) -> bool {
    if totals.weight == 0 {
        return true;
    }
    let share =
        (totals.assumed_connections as f64 + 1.0) * f64::from(weight.max(1)) / totals.weight as f64;
    let capacity = (factor * share).ceil();
    (assumed as f64 + 1.0) <= capacity
}

/// Settings of the rebalancing hint (`[rebalance]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalancePolicy {
    /// Off when false: `shed` is always 0.
    pub enabled: bool,
    /// How far above the mean an instance may be before it is asked to shed (0.10 = 10 %).
    pub tolerance: f64,
    /// At most this fraction of the instance's connections per heartbeat.
    pub shed_max_ratio: f64,
    /// Clients that lost their connection wait a random time below this before they
    /// reconnect (told in every `/servers` answer), so a shed round or a server's
    /// death does not become a reconnect storm.
    pub reconnect_jitter_ms: u64,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        RebalancePolicy {
            enabled: true,
            tolerance: 0.10,
            shed_max_ratio: 0.01,
            reconnect_jitter_ms: 5_000,
        }
    }
}

/// The service as the rebalancing rule sees it at one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// Mean load over the instances handed out, pending hand-outs included.
    pub mean_load: f64,
    /// Lowest load of an instance that can take one more connection (handed out and
    /// under its cap); `None` when every instance is at its cap.
    pub min_load: Option<f64>,
    /// Connections it would take to lift every instance under `mean × (1 − tolerance)`
    /// to that level (0 when there is no hole).
    pub hole_deficit: f64,
    /// Devices asked to disconnect recently and, by the reconnect jitter, still
    /// expected to reconnect: they will land in the holes without more shedding.
    pub in_flight: f64,
}

/// The [`Balance`] of a service from its index's aggregates: `min_load` (the lowest
/// key that can take one more connection), and `sums_below(floor)`, the `(weight,
/// assumed connections)` of the instances keyed under the floor `mean × (1 −
/// tolerance)`, so the deficit `Σ (floor − load) × weight = floor × Σ weight − Σ
/// assumed` is one descent of the index: O(log N) whatever the loads (walking the keys
/// under the floor cost a heartbeat 2.2 ms at 100k uneven instances). `in_flight` is
/// asked only when there is a hole: no heartbeat pays for it otherwise.
pub fn balance(
    totals: &Totals,
    min_load: Option<f64>,
    policy: &RebalancePolicy,
    sums_below: impl FnOnce(f64) -> (u64, u64),
    in_flight: impl FnOnce() -> f64,
) -> Balance {
    let mean_load = totals.mean_load();
    let floor = mean_load * (1.0 - policy.tolerance);
    let hole_deficit = if min_load.is_some_and(|min| min < floor) {
        let (weight, assumed) = sums_below(floor);
        (floor * weight as f64 - assumed as f64).max(0.0)
    } else {
        0.0
    };
    Balance {
        mean_load,
        min_load,
        hole_deficit,
        in_flight: if hole_deficit > 0.0 { in_flight() } else { 0.0 },
    }
}

/// How many connections an instance should close before its next heartbeat.
///
/// An instance above the mean sheds when it is over the mean by more than the
/// tolerance (a hot server), or when some instance sits under the mean by more than
/// the tolerance (a hole: a server just added or restarted). Without the second case a
/// scale-out by less than the tolerance would leave the new servers empty for good.
///
/// Damping, so that the fleet settles instead of handing devices back and forth:
/// - never more than `shed_max_ratio` of its connections, and at least one while
///   shedding is due (1 % of under 100 connections would round to nothing, and a small
///   fleet would never even out);
/// - never enough to take it below the mean: devices only flow from above the mean
///   to below it, so no two servers trade the same devices;
/// - nothing for a hole that the devices already shed and still reconnecting will
///   fill (the registry sees a device again only when it lands, up to one jitter
///   later; without this, the last round before the fleet evens out overshoots);
/// - nothing while no instance below the mean can take them;
/// - once every instance is within the tolerance of the mean, nothing at all.
pub fn shed(connections: u64, weight: u32, balance: &Balance, policy: &RebalancePolicy) -> u64 {
    if !policy.enabled || connections == 0 || policy.shed_max_ratio <= 0.0 {
        return 0;
    }
    let Some(min_load) = balance.min_load else {
        return 0;
    };
    let mean = balance.mean_load;
    let weight = f64::from(weight.max(1));
    let own_load = connections as f64 / weight;
    let hot = own_load > mean * (1.0 + policy.tolerance);
    let hole =
        min_load < mean * (1.0 - policy.tolerance) && balance.hole_deficit > balance.in_flight;
    if !(hot || hole) || min_load >= mean {
        return 0;
    }
    let fair_share = (mean * weight).ceil();
    let above_mean = (connections as f64 - fair_share).max(0.0);
    let per_beat = (connections as f64 * policy.shed_max_ratio)
        .floor()
        .max(1.0);
    above_mean.min(per_beat) as u64
}

/// How many connections a drained instance with a paced evacuation should close
/// before its next heartbeat: `rate × heartbeat_secs`, at most what it reported, so a
/// full server empties at a pace the rest of the fleet can absorb. Zero without one.
pub fn evacuation_shed(connections: u64, rate: Option<u32>, heartbeat_secs: u32) -> u64 {
    rate.map_or(0, |rate| {
        (u64::from(rate) * u64::from(heartbeat_secs.max(1))).min(connections)
    })
}

#[cfg(test)]
pub mod reference;
#[cfg(test)]
mod tests;
