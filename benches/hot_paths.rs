//! Micro-benchmarks of the registry's and forwarder's hot pure paths, with criterion:
//! a heartbeat and a `/servers` pick on tables of 1k, 10k and 100k instances whose
//! loads are shaped like real fleets (equal; uneven `i % 997`; a scale-out where a
//! tenth are empty newcomers; a few hot servers among cold ones), a keyed pick, a ring
//! pick, the PROXY protocol headers, and one dashboard-history sample of a table (the
//! walk the sampler makes under the table's lock). No I/O: the library's own types,
//! called in-process. Each table also prints its index steps per heartbeat, the count
//! the core's own test bounds.
//!
//! ```text
//! cargo bench --bench hot_paths
//! cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3   # shorter
//! SB_BENCH_SIZES=1000,100000 cargo bench --bench hot_paths -- heartbeat   # a subset
//! ```
//!
//! Read a heartbeat's cost at 100k against its cost at 1k of the same shape: a path
//! whose work grows with the fleet shows there first.

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use support::knobs;
use switchboard::forwarder::proxy_protocol;
use switchboard::history::{History, sampler};
use switchboard::lease;
use switchboard::registry::ring::{self, Ring};
use switchboard::registry::table::{RankQuery, Ranked};
use switchboard::registry::{InstanceSpec, LeaseHash, RebalancePolicy, ServiceTable};

/// Instances on the ring and in the keyed-pick table.
const N: usize = 10_000;
/// Affinity keys cycled through by the keyed picks.
const KEYS: usize = 1024;
/// The registry clock during the run (no instance expires: nothing moves it).
const NOW: u64 = 60_000;

/// A load distribution: instance index to reported connections.
type Shape = (&'static str, fn(usize) -> u64);

/// The shapes every size is benched with.
const SHAPES: [Shape; 4] = [
    ("equal", |_| 500),
    ("uneven i%997", |i| (i % 997) as u64),
    (
        "scale-out 10% empty",
        |i| if i % 10 == 0 { 0 } else { 1_000 },
    ),
    ("few hot", |i| {
        if i % 100 == 0 {
            50_000
        } else {
            (i % 50) as u64
        }
    }),
];

/// A table of `n` instances in three zones with connections by `shape`, and each
/// instance's id and lease hash.
fn table(n: usize, shape: fn(usize) -> u64) -> (ServiceTable, Vec<(String, LeaseHash)>) {
    let mut table = ServiceTable::new("bench");
    let policy = RebalancePolicy::default();
    let members: Vec<(String, LeaseHash)> = (0..n)
        .map(|i| (format!("i{i:06}"), lease::hash(&format!("lease-{i}"))))
        .collect();
    for (i, (id, hash)) in members.iter().enumerate() {
        let spec = InstanceSpec {
            address: format!(
                "10.{}.{}.{}:6666",
                i / 62_500 % 250,
                i / 250 % 250,
                i % 250 + 1
            ),
            weight: 1,
            max_connections: None,
            zone: Some(format!("zone-{}", i % 3)),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            ttl_secs: 15,
        };
        table.register(id.clone(), spec, *hash, NOW, 0);
        let _ = table.heartbeat(id, hash, Some(shape(i)), NOW, &policy);
    }
    (table, members)
}

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|k| format!("device-{k}").into_bytes())
        .collect()
}

/// A heartbeat that moves its instance in the index (its count changes a little,
/// around the shape's), and a `/servers?limit=5`, per size and shape.
fn registry(c: &mut Criterion) {
    let policy = RebalancePolicy::default();
    let query = RankQuery {
        limit: 5,
        ..RankQuery::default()
    };
    for n in knobs::sizes("SB_BENCH_SIZES", &[1_000, 10_000, 100_000], 1_000_000) {
        for (name, shape) in SHAPES {
            let (mut table, members) = table(n, shape);
            let mut seq = 0usize;
            let steps_before = table.index_steps();
            let mut beats = 0u64;
            c.bench_function(&format!("heartbeat, {n} instances, {name}"), |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(7_919);
                    beats += 1;
                    let i = seq % n;
                    let (id, hash) = &members[i];
                    let connections = shape(i) + (seq % 3) as u64;
                    black_box(table.heartbeat(id, hash, Some(connections), NOW, &policy))
                })
            });
            println!(
                "  index steps per heartbeat, {n} instances, {name}: {:.1}",
                (table.index_steps() - steps_before) as f64 / beats.max(1) as f64
            );
            c.bench_function(&format!("/servers limit 5, {n} instances, {name}"), |b| {
                b.iter(|| black_box(Ranked::of(&mut table, black_box(&query), NOW)))
            });
        }
    }

    let (mut table, _) = table(N, SHAPES[1].1);
    let keys = keys();
    let mut k = 0usize;
    c.bench_function("/servers limit 5 with key, 10k-instance table", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            let query = RankQuery {
                limit: 5,
                key: Some(&keys[k % KEYS]),
                ..RankQuery::default()
            };
            black_box(Ranked::of(&mut table, &query, NOW))
        })
    });
}

fn ring(c: &mut Criterion) {
    let ids: Vec<String> = (0..N).map(|i| format!("i{i:05}")).collect();
    let members = || {
        ids.iter()
            .enumerate()
            .map(|(slot, id)| (slot as u32, id.as_str()))
    };
    c.bench_function("ring build, 10k instances", |b| {
        b.iter(|| black_box(Ring::build(members())))
    });
    let ring = Ring::build(members());
    let hashes: Vec<u64> = keys().iter().map(|k| ring::key_hash(k)).collect();
    let mut k = 0usize;
    c.bench_function(
        "ring pick (a third of the slots full), 10k instances",
        |b| {
            b.iter(|| {
                k = k.wrapping_add(1);
                black_box(ring.pick(hashes[k % KEYS], |slot| slot % 3 != 0))
            })
        },
    );
}

/// One dashboard-history sample of a table (`history::sampler::sample_table`: the walk
/// under the table's lock, each instance handed to the history), per size, on the
/// uneven shape: the lock is held this long every `history_sample_secs`.
fn history_sample(c: &mut Criterion) {
    for n in knobs::sizes("SB_BENCH_SIZES", &[1_000, 10_000, 100_000], 1_000_000) {
        let (mut table, _) = table(n, SHAPES[1].1);
        let history = History::new(std::time::Duration::from_secs(5), 360);
        let mut unix_ms = 0u64;
        c.bench_function(&format!("history sample, {n} instances"), |b| {
            b.iter(|| {
                unix_ms += 5_000;
                history.record(unix_ms, |tick| sampler::sample_table(tick, &mut table, NOW));
            })
        });
    }
}

fn proxy_header(c: &mut Criterion) {
    let v4: (SocketAddr, SocketAddr) = (
        "203.0.113.7:51234".parse().expect("literal"),
        "10.0.0.1:443".parse().expect("literal"),
    );
    let v6: (SocketAddr, SocketAddr) = (
        "[2001:db8::7]:51234".parse().expect("literal"),
        "[2001:db8::1]:443".parse().expect("literal"),
    );
    c.bench_function("PROXY v1 header, IPv4", |b| {
        b.iter(|| black_box(proxy_protocol::v1(black_box(v4.0), black_box(v4.1))))
    });
    c.bench_function("PROXY v2 header, IPv4", |b| {
        b.iter(|| black_box(proxy_protocol::v2(black_box(v4.0), black_box(v4.1))))
    });
    c.bench_function("PROXY v2 header, IPv6", |b| {
        b.iter(|| black_box(proxy_protocol::v2(black_box(v6.0), black_box(v6.1))))
    });
}

criterion_group!(benches, registry, history_sample, ring, proxy_header);
criterion_main!(benches);
