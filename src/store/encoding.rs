//! The column encoding of a registration, both ways: an instance as the
//! [`InstanceRecord`] a store writes (tags and metadata as JSON text, the lease hash
//! as hex) and a stored record as the registry's instance. The only place that maps
//! registry fields to columns; the SQL is the backends', the row decoding `row.rs`'s.

use super::{InstanceRecord, StoreError};
use crate::lease;
use crate::registry::table;
use crate::registry::{Instance, InstanceSpec, LeaseHash, Millis};

/// The record of a new registration of `spec` under `id`, first seen at `now_unix`
/// (Unix ms), with no connections yet.
pub fn new_record(
    id: String,
    service: &str,
    spec: &InstanceSpec,
    lease_hash: &LeaseHash,
    now_unix: u64,
) -> InstanceRecord {
    InstanceRecord {
        id,
        service: service.to_owned(),
        address: spec.address.clone(),
        weight: spec.weight,
        max_connections: spec.max_connections,
        zone: spec.zone.clone(),
        tags_json: serde_json::to_string(&spec.tags).expect("strings serialize"),
        metadata_json: serde_json::to_string(&spec.metadata).expect("strings serialize"),
        ttl_secs: spec.ttl_secs,
        lease_hash: hex::encode(lease_hash),
        draining: false,
        evacuate_per_sec: None,
        connections: 0,
        registered_at_ms: now_unix,
        last_heartbeat_ms: now_unix,
    }
}

/// The registry's instance for a stored record (a fresh lease of life from `now`).
///
/// # Errors
/// [`StoreError::Corrupt`] when a stored field cannot be read back.
pub fn instance_from_record(r: InstanceRecord, now: Millis) -> Result<Instance, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: r.id.clone(),
        reason: reason.to_owned(),
    };
    let lease_hash = lease::parse_hash(&r.lease_hash).ok_or_else(|| corrupt("bad lease hash"))?;
    let tags = serde_json::from_str(&r.tags_json).map_err(|_| corrupt("bad tags"))?;
    let metadata = serde_json::from_str(&r.metadata_json).map_err(|_| corrupt("bad metadata"))?;
    let spec = InstanceSpec {
        address: r.address.clone(),
        weight: r.weight,
        max_connections: r.max_connections,
        zone: r.zone.clone(),
        tags,
        metadata,
        ttl_secs: r.ttl_secs,
    };
    let mut instance = table::new_instance(r.id.clone(), spec, lease_hash, now, r.registered_at_ms);
    instance.draining = r.draining;
    instance.evacuate_per_sec = r.evacuate_per_sec;
    instance.connections = r.connections;
    Ok(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_record_reads_back_as_the_instance_it_encodes() {
        let spec = InstanceSpec {
            address: "10.0.0.1:6666".to_owned(),
            weight: 3,
            max_connections: Some(500),
            zone: Some("eu-1".to_owned()),
            tags: vec!["mqtt".to_owned(), "v2".to_owned()],
            metadata: [("rack".to_owned(), "r7".to_owned())].into_iter().collect(),
            ttl_secs: 15,
        };
        let hash = lease::hash("a lease");
        let record = new_record("id-1".to_owned(), "svc", &spec, &hash, 1_700_000_000_000);
        let instance = instance_from_record(record, 42).expect("readable");
        assert_eq!(instance.spec, spec);
        assert_eq!(instance.lease_hash, hash);
        assert_eq!(instance.registered_at_unix_ms, 1_700_000_000_000);
        assert_eq!((instance.connections, instance.draining), (0, false));
    }

    #[test]
    fn an_unreadable_column_is_corrupt_and_named() {
        let spec = InstanceSpec {
            address: "10.0.0.1:6666".to_owned(),
            weight: 1,
            max_connections: None,
            zone: None,
            tags: Vec::new(),
            metadata: Default::default(),
            ttl_secs: 15,
        };
        let good = new_record("id-2".to_owned(), "svc", &spec, &lease::hash("x"), 0);
        for (bad, reason) in [
            (
                InstanceRecord {
                    lease_hash: "zz".to_owned(),
                    ..good.clone()
                },
                "bad lease hash",
            ),
            (
                InstanceRecord {
                    tags_json: "{".to_owned(),
                    ..good.clone()
                },
                "bad tags",
            ),
            (
                InstanceRecord {
                    metadata_json: "[1]".to_owned(),
                    ..good.clone()
                },
                "bad metadata",
            ),
        ] {
            match instance_from_record(bad, 0) {
                Err(StoreError::Corrupt { id, reason: got }) => {
                    assert_eq!((id.as_str(), got.as_str()), ("id-2", reason));
                }
                other => panic!("expected corrupt ({reason}), got {other:?}"),
            }
        }
    }
}
