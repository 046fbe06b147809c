//! The fallback TCP forwarder of SPEC section 4: for devices that only know one
//! address, each listener picks a backend by the registry's ranking (in-process) and
//! relays bytes. Like nginx `stream`, fed by live load.
//!
//! `listener.rs` accepts and limits, `connect.rs` chooses and connects, `relay.rs`
//! moves bytes, `proxy_protocol.rs` writes PROXY headers, `health.rs` checks static
//! instances, `udp.rs` relays UDP sessions (their bounded table in `udp_sessions.rs`).
//! `backend.rs` is a relayed connection's backend socket (TCP, or Unix for `unix:`).
//! `budget.rs` counts the descriptors every listener holds against the fd budget.
//! `supervisor.rs` starts, keeps and stops the listeners and health loops.
//! At the edge (SPEC 9): `edge.rs` opens a device's stream before a backend is chosen
//! (the TLS handshake, the ClientHello an SNI route is picked by, the MQTT CONNECT whose
//! client id is the affinity key), with `hello.rs` and `mqtt.rs` the pure parsers and
//! `peek.rs` the bounded read; `tls_relay.rs` relays a terminated connection.
//! Must not speak HTTP or SQL.

pub mod backend;
pub mod budget;
pub mod connect;
pub mod edge;
pub mod health;
pub mod hello;
pub mod listener;
pub mod mqtt;
pub mod peek;
pub mod proxy_protocol;
pub mod relay;
pub mod stats;
pub mod supervisor;
pub mod tls_relay;
pub mod udp;
pub mod udp_sessions;
pub mod workers;

use std::collections::HashMap;
use std::sync::Mutex;

/// Live relayed connections per instance id, across every listener: the connection
/// count of static instances, which do not report their own.
#[derive(Debug, Default)]
pub struct LiveCounts {
    by_id: Mutex<HashMap<String, u64>>,
}

impl LiveCounts {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.by_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Live connections to an instance.
    pub fn get(&self, id: &str) -> u64 {
        self.map().get(id).copied().unwrap_or(0)
    }

    /// One more connection to `id`.
    pub fn open(&self, id: &str) {
        let mut map = self.map();
        // The id is copied only for an instance's first live connection.
        match map.get_mut(id) {
            Some(n) => *n += 1,
            None => {
                map.insert(id.to_owned(), 1);
            }
        }
    }

    /// One connection to `id` fewer.
    pub fn close(&self, id: &str) {
        let mut map = self.map();
        if let Some(n) = map.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(id);
            }
        }
    }
}
