//! Micro-benchmarks of the registry's and forwarder's hot pure paths, with criterion:
//! a heartbeat and a `/servers` pick on a 10,000-instance table, a ring pick, and the
//! PROXY protocol headers. No I/O: the library's own types, called in-process.
//!
//! ```text
//! cargo bench --bench hot_paths
//! cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3   # shorter
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::forwarder::proxy_protocol;
use switchboard::lease;
use switchboard::registry::ring::{self, Ring};
use switchboard::registry::table::RankQuery;
use switchboard::registry::{InstanceSpec, LeaseHash, RebalancePolicy, ServiceTable};

/// Instances in the table and on the ring.
const N: usize = 10_000;
/// Affinity keys cycled through by the keyed picks.
const KEYS: usize = 1024;
/// The registry clock during the run (no instance expires: nothing moves it).
const NOW: u64 = 60_000;

/// A table of [`N`] instances in three zones with spread connection counts, and each
/// instance's id and lease hash.
fn table() -> (ServiceTable, Vec<(String, LeaseHash)>) {
    let mut table = ServiceTable::new("bench");
    let policy = RebalancePolicy::default();
    let members: Vec<(String, LeaseHash)> = (0..N)
        .map(|i| (format!("i{i:05}"), lease::hash(&format!("lease-{i}"))))
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
        let connections = (i as u64 * 37) % 500;
        let _ = table.heartbeat(id, hash, Some(connections), NOW, &policy);
    }
    (table, members)
}

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|k| format!("device-{k}").into_bytes())
        .collect()
}

fn registry(c: &mut Criterion) {
    let (mut table, members) = table();
    let policy = RebalancePolicy::default();
    let mut seq = 0usize;
    c.bench_function("heartbeat, 10k-instance table", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let (id, hash) = &members[seq % N];
            let connections = (seq as u64 * 31) % 500;
            black_box(table.heartbeat(id, hash, Some(connections), NOW, &policy))
        })
    });

    let query = RankQuery {
        limit: 5,
        ..RankQuery::default()
    };
    c.bench_function("/servers limit 5, 10k-instance table", |b| {
        b.iter(|| black_box(table.rank(black_box(&query), NOW)))
    });

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
            black_box(table.rank(&query, NOW))
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

criterion_group!(benches, registry, ring, proxy_header);
criterion_main!(benches);
