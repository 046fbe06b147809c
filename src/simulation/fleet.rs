//! The simulated fleet: servers that heartbeat their true counts and honour `shed`,
//! devices that reconnect after a random jitter, all on one registry core
//! ([`ServiceTable`]) and a simulated clock. No sockets, no threads, no wall clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::registry::table::{RankQuery, Ranked};
use crate::registry::{InstanceSpec, LeaseHash, Millis, RebalancePolicy, ServiceTable};

use super::report::Round;

/// Resolution of the simulated clock: reconnects and heartbeats fall on 10 ms ticks.
pub const TICK_MS: Millis = 10;

/// The sweep runs this often, as `sync` does in the server.
const SWEEP_EVERY_MS: Millis = 250;

/// What the simulated fleet is made of.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Servers at the start.
    pub servers: usize,
    /// Devices, spread evenly over the servers at the start.
    pub devices: u64,
    /// Servers are labelled with this many zones, round robin.
    pub zones: usize,
    /// The servers' `ttl_secs`; they heartbeat every `ttl_secs / 3`.
    pub ttl_secs: u32,
    /// The registry's rebalancing settings (`reconnect_jitter_ms` included).
    pub policy: RebalancePolicy,
    /// Servers per `/servers` answer; a device tries them in order.
    pub list_limit: usize,
    /// Seed of every random choice: the same settings give the same run.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            servers: 1_000,
            devices: 10_000_000,
            zones: 3,
            ttl_secs: 15,
            policy: RebalancePolicy::default(),
            list_limit: 5,
            seed: 1,
        }
    }
}

/// Why a device is reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Its server closed it on a `shed` hint.
    Shed = 0,
    /// Its server stopped or crashed.
    Lost = 1,
}

/// One simulated backend process.
#[derive(Debug)]
struct Server {
    id: String,
    lease: LeaseHash,
    zone: String,
    /// Devices connected right now (the truth it heartbeats).
    connections: u64,
    /// Running and registered: accepts connections and heartbeats.
    up: bool,
    draining: bool,
    /// Bumped when the process stops, so its queued heartbeats are dropped.
    generation: u32,
    /// Devices that lost their server (not shed) it accepted in the current second.
    storm_this_second: u64,
}

/// Counters of the round in progress.
#[derive(Debug, Default)]
struct Tally {
    reconnects: u64,
    resolves: u64,
    shed: u64,
    max_shed_ratio: f64,
    worst_reconnect_share: Option<f64>,
}

/// A fleet of servers and devices around one registry core.
#[derive(Debug)]
pub struct Fleet {
    settings: Settings,
    table: ServiceTable,
    servers: Vec<Server>,
    index_of: HashMap<String, usize>,
    now: Millis,
    /// Devices waiting to reconnect, per tick, on a ring one jitter long, by why they
    /// lost their connection: `[shed, lost]`.
    wheel: Vec<[u64; 2]>,
    in_flight: u64,
    /// Next heartbeat of each running server: (when, server, generation).
    beats: BinaryHeap<Reverse<(Millis, usize, u32)>>,
    next_sweep: Millis,
    next_second: Millis,
    rng: StdRng,
    tally: Tally,
}

impl Fleet {
    /// A steady fleet: every server registered and heartbeating its even share.
    pub fn new(settings: Settings) -> Fleet {
        let ticks = settings.policy.reconnect_jitter_ms / TICK_MS + 2;
        let mut fleet = Fleet {
            table: ServiceTable::new("sim"),
            servers: Vec::new(),
            index_of: HashMap::new(),
            now: 0,
            wheel: vec![[0; 2]; usize::try_from(ticks).expect("jitter fits in memory")],
            in_flight: 0,
            beats: BinaryHeap::new(),
            next_sweep: SWEEP_EVERY_MS,
            next_second: 1_000,
            rng: StdRng::seed_from_u64(settings.seed),
            tally: Tally::default(),
            settings,
        };
        let (count, devices) = (fleet.settings.servers, fleet.settings.devices);
        for i in 0..count {
            let server = fleet.add_server();
            let share = devices / count as u64 + u64::from((i as u64) < devices % count as u64);
            fleet.servers[server].connections = share;
            fleet.beat(server);
            // Servers started at different times: spread their heartbeats over a period.
            let phase = fleet.rng.random_range(TICK_MS..=fleet.heartbeat_ms());
            fleet.servers[server].generation += 1;
            let generation = fleet.servers[server].generation;
            fleet.beats.push(Reverse((phase, server, generation)));
        }
        fleet
    }

    /// The settings the fleet runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The simulated time, in milliseconds since the start.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Number of servers ever added (their indexes are `0..len`).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the fleet has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The zone label of a server.
    pub fn zone(&self, server: usize) -> &str {
        &self.servers[server].zone
    }

    /// Devices connected to a server now.
    pub fn connections(&self, server: usize) -> u64 {
        self.servers[server].connections
    }

    /// The heartbeat period of every server, in milliseconds.
    pub fn heartbeat_ms(&self) -> Millis {
        u64::from((self.settings.ttl_secs / 3).max(1)) * 1000
    }

    /// A new server, empty; it registers now and heartbeats from the next period on,
    /// as the client crate does. Returns its index.
    pub fn add_server(&mut self) -> usize {
        let index = self.servers.len();
        let id = format!("s{index}");
        let zone = format!("z{}", index % self.settings.zones.max(1));
        self.servers.push(Server {
            lease: [0; 32],
            id: id.clone(),
            zone,
            connections: 0,
            up: false,
            draining: false,
            generation: 0,
            storm_this_second: 0,
        });
        self.index_of.insert(id, index);
        self.start(index);
        index
    }

    /// Starts a stopped server: it registers empty and heartbeats from the next period.
    pub fn start(&mut self, server: usize) {
        let spec = InstanceSpec {
            address: format!(
                "10.{}.{}.{}:6666",
                server >> 16,
                (server >> 8) & 255,
                server & 255
            ),
            weight: 1,
            max_connections: None,
            zone: Some(self.servers[server].zone.clone()),
            tags: Vec::new(),
            metadata: Default::default(),
            ttl_secs: self.settings.ttl_secs,
        };
        let s = &mut self.servers[server];
        s.up = true;
        s.draining = false;
        s.connections = 0;
        self.table
            .register(s.id.clone(), spec, s.lease, self.now, 0);
        let first_beat = self.now + self.heartbeat_ms();
        self.beats.push(Reverse((
            first_beat,
            server,
            self.servers[server].generation,
        )));
    }

    /// The process dies (kill -9, a host or zone lost): its devices lose their
    /// connections at once; the registry only learns from the missing heartbeats.
    pub fn crash(&mut self, server: usize) {
        self.halt(server);
    }

    /// A graceful stop through the client crate: deregister, then close.
    pub fn stop(&mut self, server: usize) {
        self.table.remove(&self.servers[server].id);
        self.halt(server);
    }

    /// Drains a server with a paced evacuation of `per_sec` connections per second.
    pub fn drain(&mut self, server: usize, per_sec: u32) {
        self.servers[server].draining = true;
        self.table
            .drain(&self.servers[server].id, Some(per_sec), self.now);
    }

    fn halt(&mut self, server: usize) {
        let s = &mut self.servers[server];
        s.up = false;
        s.generation += 1;
        let lost = std::mem::take(&mut s.connections);
        self.disconnect(lost, Cause::Lost);
    }

    /// Runs one heartbeat period and answers what happened in it.
    pub fn run_round(&mut self) -> Round {
        let end = self.now + self.heartbeat_ms();
        while self.now < end {
            self.now += TICK_MS;
            self.tick();
        }
        self.close_round()
    }

    fn tick(&mut self) {
        let slot = self.slot(self.now);
        let [shed, lost] = std::mem::take(&mut self.wheel[slot]);
        self.in_flight -= shed + lost;
        for _ in 0..shed {
            self.reconnect(Cause::Shed);
        }
        for _ in 0..lost {
            self.reconnect(Cause::Lost);
        }
        while let Some(&Reverse((at, server, generation))) = self.beats.peek() {
            if at > self.now {
                break;
            }
            self.beats.pop();
            if self.servers[server].generation == generation && self.servers[server].up {
                self.beat(server);
                self.beats
                    .push(Reverse((at + self.heartbeat_ms(), server, generation)));
            }
        }
        if self.now >= self.next_sweep {
            self.table.sweep(self.now, true);
            self.next_sweep += SWEEP_EVERY_MS;
        }
        if self.now >= self.next_second {
            self.close_second();
            self.next_second += 1_000;
        }
    }

    /// One device connects as the client crate's `Device` does: it resolves through
    /// `/servers` and tries the answer's first server; when that one is down it
    /// resolves again and tries the new answer's first server not yet tried, as many
    /// times as the answer is long. If none answers, it waits another jitter.
    fn reconnect(&mut self, cause: Cause) {
        let mut tried: Vec<usize> = Vec::new();
        for _ in 0..self.settings.list_limit.max(1) {
            self.tally.resolves += 1;
            // Only the first untried server of the answer matters: asking for no more
            // gives the same first and the same hand-out, without building the rest.
            let query = RankQuery {
                limit: (tried.len() + 1).min(self.settings.list_limit),
                ..RankQuery::default()
            };
            let answer = Ranked::of(&mut self.table, &query, self.now);
            let pick = answer
                .servers
                .iter()
                .filter_map(|s| self.index_of.get(&s.id).copied())
                .find(|i| !tried.contains(i));
            let Some(i) = pick else { break };
            if !self.servers[i].up {
                tried.push(i);
                continue;
            }
            self.servers[i].connections += 1;
            if cause == Cause::Lost {
                self.servers[i].storm_this_second += 1;
            }
            self.tally.reconnects += 1;
            return;
        }
        self.disconnect(1, cause);
    }

    /// A running server heartbeats its true count and closes what it is asked to shed.
    fn beat(&mut self, server: usize) {
        let s = &self.servers[server];
        let answer = self.table.heartbeat(
            &s.id,
            &s.lease,
            Some(s.connections),
            self.now,
            &self.settings.policy,
        );
        let Ok(answer) = answer else {
            // Forgotten (removed after 3 × ttl): register again, as the client does.
            let kept = s.connections;
            self.start(server);
            self.servers[server].connections = kept;
            return;
        };
        let held = self.servers[server].connections;
        let shed = answer.shed.min(held);
        if shed > 0 {
            self.servers[server].connections -= shed;
            self.tally.shed += shed;
            if !self.servers[server].draining {
                let ratio = shed as f64 / held as f64;
                self.tally.max_shed_ratio = self.tally.max_shed_ratio.max(ratio);
            }
            self.disconnect(shed, Cause::Shed);
        }
    }

    /// `count` devices lost their connection: each reconnects after its own jitter.
    fn disconnect(&mut self, count: u64, cause: Cause) {
        let jitter = self.settings.policy.reconnect_jitter_ms;
        for _ in 0..count {
            // At least one tick later: a device never reconnects in the same instant.
            let wait = if jitter == 0 {
                0
            } else {
                self.rng.random_range(0..jitter)
            };
            let slot = self.slot(self.now + TICK_MS + wait);
            self.wheel[slot][cause as usize] += 1;
        }
        self.in_flight += count;
    }

    fn slot(&self, at: Millis) -> usize {
        usize::try_from((at / TICK_MS) % self.wheel.len() as u64).expect("ring index")
    }

    /// Judges the second that ended: the most devices that lost their server one
    /// running server took, against its fair share (the second's such reconnects over
    /// the running servers). Shed devices are left out: they are meant to go to the
    /// emptiest servers, not evenly.
    fn close_second(&mut self) {
        let running = self.servers.iter().filter(|s| s.up && !s.draining).count();
        let total: u64 = self.servers.iter().map(|s| s.storm_this_second).sum();
        let most = self
            .servers
            .iter()
            .map(|s| s.storm_this_second)
            .max()
            .unwrap_or(0);
        // A handful of reconnects cannot be spread evenly; judge seconds with at
        // least 20 per running server.
        if running > 0 && total >= 20 * running as u64 {
            let share = most as f64 / (total as f64 / running as f64);
            let worst = self.tally.worst_reconnect_share.get_or_insert(0.0);
            *worst = worst.max(share);
        }
        for s in &mut self.servers {
            s.storm_this_second = 0;
        }
    }

    fn close_round(&mut self) -> Round {
        let tally = std::mem::take(&mut self.tally);
        let (mean, max, min) = self.spread_parts();
        let secs = self.heartbeat_ms() as f64 / 1000.0;
        Round {
            at_ms: self.now,
            max_over_mean: if mean > 0.0 { max / mean } else { 1.0 },
            min_over_mean: if mean > 0.0 { min / mean } else { 1.0 },
            moved: tally.reconnects,
            devices: self.settings.devices,
            resolves_per_sec: tally.resolves as f64 / secs,
            shed: tally.shed,
            max_shed_ratio: tally.max_shed_ratio,
            worst_reconnect_share: tally.worst_reconnect_share,
            in_flight: self.in_flight,
        }
    }

    /// Mean, max and min connections over the running, non-draining servers. The mean
    /// counts the devices still reconnecting: they are part of the fleet's load, and
    /// the registry still counts them where they were until the next heartbeat.
    fn spread_parts(&self) -> (f64, f64, f64) {
        let counts: Vec<u64> = self
            .servers
            .iter()
            .filter(|s| s.up && !s.draining)
            .map(|s| s.connections)
            .collect();
        if counts.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let mean = (counts.iter().sum::<u64>() + self.in_flight) as f64 / counts.len() as f64;
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        let min = counts.iter().copied().min().unwrap_or(0) as f64;
        (mean, max, min)
    }

    /// What moving every running server to the mean would take now: the connections
    /// above it, summed.
    pub fn surplus(&self) -> u64 {
        let (mean, _, _) = self.spread_parts();
        self.servers
            .iter()
            .filter(|s| s.up && !s.draining)
            .map(|s| (s.connections as f64 - mean).max(0.0).round() as u64)
            .sum()
    }

    /// The mean connections per running, non-draining server.
    pub fn mean(&self) -> f64 {
        self.spread_parts().0
    }

    /// Devices waiting to reconnect.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }
}
