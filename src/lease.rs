//! Instance ids and lease secrets: random generation and the hash that is stored.
//!
//! A lease is 32 random bytes in hex, shown once to the backend; only its SHA-256 is
//! kept in memory and in the store.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::registry::LeaseHash;

/// A new random lease secret (64 hex characters).
pub fn new_lease() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new random instance id (32 hex characters, 128 bits).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a lease.
pub fn hash(lease: &str) -> LeaseHash {
    Sha256::digest(lease.as_bytes()).into()
}

/// Parses a stored lease hash.
pub fn parse_hash(text: &str) -> Option<LeaseHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_hex_and_differs_per_lease() {
        let (a, b) = (new_lease(), new_lease());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let stored = hex::encode(hash(&a));
        assert_eq!(parse_hash(&stored), Some(hash(&a)));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(parse_hash("zz"), None);
    }
}
