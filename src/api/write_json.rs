//! Hand-written JSON for the hot answers, `/servers`, a heartbeat's and a
//! registration's: the bytes
//! serde_json writes for their DTOs (tests compare the two on generated inputs), into
//! one buffer sized up front. serde_json through axum's `Json` was a third of a
//! `/servers` request: it escapes strings byte by byte (ids, addresses and keys that
//! never need it) and grows its buffer several times.
//!
//! Owns only the encoding; the DTOs in `servers.rs` and `instances.rs` stay the
//! schema of `/openapi.json`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::registry::table::Ranked;

/// A JSON body with its content type, as axum's `Json` answers.
fn answer(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Appends `text` as a JSON string: copied whole when nothing in it needs escaping
/// (serde_json escapes control characters, `"` and `\` only), else by serde_json.
fn push_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("a string always serialises");
    }
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// As serde_json writes an `f64` (`null` when not finite). A whole number below 10^15
/// (a load at weight 1) is written by `itoa` with the `.0` serde_json gives it: its
/// general float path cost more than the rest of a server's entry.
fn push_f64(out: &mut Vec<u8>, value: f64) {
    if value.fract() == 0.0 && value.is_sign_positive() && value < 1e15 {
        // Exact: a whole f64 below 2^53 converts without loss.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        push_u64(out, value as u64);
        out.extend_from_slice(b".0");
    } else {
        serde_json::to_writer(&mut *out, &value).expect("an f64 always serialises");
    }
}

/// The `/servers` JSON body (`servers::ServersAnswer`'s fields, in its order).
pub fn servers_body(service: &str, ranked: &Ranked, reconnect_jitter_ms: u64) -> Vec<u8> {
    // About what one server takes (a 32-digit id, an IPv4 address, a short zone).
    let mut out = Vec::with_capacity(128 + ranked.servers.len() * 144);
    out.extend_from_slice(b"{\"service\":");
    push_str(&mut out, service);
    out.extend_from_slice(b",\"version\":");
    push_u64(&mut out, ranked.version);
    out.extend_from_slice(b",\"reconnect_jitter_ms\":");
    push_u64(&mut out, reconnect_jitter_ms);
    out.extend_from_slice(if ranked.self_preservation {
        b",\"self_preservation\":true,\"servers\":["
    } else {
        b",\"self_preservation\":false,\"servers\":["
    });
    for (i, server) in ranked.servers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_str(&mut out, &server.id);
        out.extend_from_slice(b",\"address\":");
        push_str(&mut out, &server.address);
        out.extend_from_slice(b",\"zone\":");
        match &server.zone {
            Some(zone) => push_str(&mut out, zone),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"weight\":");
        push_u64(&mut out, u64::from(server.weight));
        out.extend_from_slice(b",\"connections\":");
        push_u64(&mut out, server.connections);
        out.extend_from_slice(b",\"load\":");
        push_f64(&mut out, server.load);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A heartbeat's JSON body (`instances::HeartbeatAnswer`'s fields, in its order).
pub fn heartbeat_body(ttl_secs: u32, shed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(b"{\"ttl_secs\":");
    push_u64(&mut out, u64::from(ttl_secs));
    out.extend_from_slice(b",\"shed\":");
    push_u64(&mut out, shed);
    out.push(b'}');
    out
}

/// A registration's answer (`instances::RegisterAnswer`'s fields, in its order).
pub fn registered(
    status: StatusCode,
    id: &str,
    service: &str,
    lease: &str,
    ttl_secs: u32,
    heartbeat_secs: u32,
) -> Response {
    let body = registered_body(id, service, lease, ttl_secs, heartbeat_secs);
    (status, answer(body)).into_response()
}

fn registered_body(
    id: &str,
    service: &str,
    lease: &str,
    ttl_secs: u32,
    heartbeat_secs: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + id.len() + service.len() + lease.len());
    out.extend_from_slice(b"{\"id\":");
    push_str(&mut out, id);
    out.extend_from_slice(b",\"service\":");
    push_str(&mut out, service);
    out.extend_from_slice(b",\"lease\":");
    push_str(&mut out, lease);
    out.extend_from_slice(b",\"ttl_secs\":");
    push_u64(&mut out, u64::from(ttl_secs));
    out.extend_from_slice(b",\"heartbeat_secs\":");
    push_u64(&mut out, u64::from(heartbeat_secs));
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::registry::table::RankedServer;

    fn server() -> impl Strategy<Value = RankedServer> {
        (
            "\\PC{0,40}",
            "[\\x00-\\x7f]{0,30}",
            proptest::option::of("\\PC{0,12}|[\"\\\\\\x00-\\x1f]{1,4}"),
            any::<u32>(),
            any::<u64>(),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(1201.0),
                Just(0.0),
                Just(-0.0),
                Just(1e15),
                Just(999_999_999_999_999.0),
                (0u64..2_000_000).prop_map(|n| n as f64),
                (0u64..2_000_000).prop_map(|n| n as f64 / 3.0)
            ],
        )
            .prop_map(
                |(id, address, zone, weight, connections, load)| RankedServer {
                    id,
                    address,
                    zone,
                    weight,
                    connections,
                    load,
                },
            )
    }

    proptest! {
        #[test]
        fn servers_match_serde_json(
            service in "\\PC{0,20}",
            version: u64,
            jitter: u64,
            self_preservation: bool,
            servers in proptest::collection::vec(server(), 0..6),
        ) {
            let ranked = Ranked { version, servers, self_preservation };
            let mine = servers_body(&service, &ranked, jitter);
            let reference = serde_json::to_vec(&crate::api::servers::reference_dto(&service, &ranked, jitter)).unwrap();
            prop_assert_eq!(String::from_utf8(mine).unwrap(), String::from_utf8(reference).unwrap());
        }

        #[test]
        fn registrations_match_serde_json(
            id in "\\PC{0,40}|[\"\\\\\\x00-\\x1f]{1,4}",
            service in "\\PC{0,20}",
            lease in "[0-9a-f]{64}|\\PC{0,10}",
            ttl_secs: u32,
            heartbeat_secs: u32,
        ) {
            let mine = registered_body(&id, &service, &lease, ttl_secs, heartbeat_secs);
            let reference = serde_json::to_vec(&crate::api::instances::RegisterAnswer {
                id, service, lease, ttl_secs, heartbeat_secs,
            }).unwrap();
            prop_assert_eq!(String::from_utf8(mine).unwrap(), String::from_utf8(reference).unwrap());
        }

        #[test]
        fn heartbeats_match_serde_json(ttl_secs: u32, shed: u64) {
            let mine = heartbeat_body(ttl_secs, shed);
            let reference = serde_json::to_vec(&crate::api::instances::HeartbeatAnswer { ttl_secs, shed }).unwrap();
            prop_assert_eq!(mine, reference);
        }
    }
}
