//! The one decoder of an instance row, shared by both stores: each store's SQL
//! selects the same column names with the same types (`bigint` integers, a boolean
//! `draining`, times as Unix milliseconds), so one generic function reads them.

use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use super::{InstanceRecord, StoreError};

/// Reads an [`InstanceRecord`] from a row with the columns `id`, `service`,
/// `address`, `weight`, `max_connections`, `zone`, `tags`, `metadata`, `ttl_secs`,
/// `lease_hash`, `draining`, `evacuate_per_sec`, `connections`, `registered_at_ms`,
/// `last_heartbeat_ms`.
///
/// # Errors
/// [`StoreError::Database`] for a missing column or type, [`StoreError::Corrupt`]
/// for a value out of range.
pub fn record_from_row<'r, R>(row: &'r R) -> Result<InstanceRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    R::Database: Database,
{
    let id: String = row.try_get("id")?;
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: id.clone(),
        reason: reason.to_owned(),
    };
    let weight: i64 = row.try_get("weight")?;
    let ttl: i64 = row.try_get("ttl_secs")?;
    Ok(InstanceRecord {
        service: row.try_get("service")?,
        address: row.try_get("address")?,
        weight: u32::try_from(weight).map_err(|_| corrupt("weight out of range"))?,
        max_connections: row
            .try_get::<Option<i64>, _>("max_connections")?
            .map(to_u64),
        zone: row.try_get("zone")?,
        tags_json: row.try_get("tags")?,
        metadata_json: row.try_get("metadata")?,
        ttl_secs: u32::try_from(ttl).map_err(|_| corrupt("ttl out of range"))?,
        lease_hash: row.try_get("lease_hash")?,
        draining: row.try_get("draining")?,
        evacuate_per_sec: row
            .try_get::<Option<i64>, _>("evacuate_per_sec")?
            .map(|rate| u32::try_from(rate).map_err(|_| corrupt("evacuation rate out of range")))
            .transpose()?,
        connections: to_u64(row.try_get("connections")?),
        registered_at_ms: to_u64(row.try_get("registered_at_ms")?),
        last_heartbeat_ms: to_u64(row.try_get("last_heartbeat_ms")?),
        id,
    })
}

/// A stored integer as a count (a negative one, which no write produces, reads as 0).
pub fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A count as a stored integer (saturating: SQL integers are signed 64-bit).
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
