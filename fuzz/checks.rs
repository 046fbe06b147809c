//! The checks the fuzz targets run, shared with `tests/fuzz_corpus.rs` (included there
//! with `#[path]`), so the normal test suite replays the committed corpus through the
//! very same code. Each check panics when an invariant breaks; a parser that panics on
//! its own fails the check the same way.
//!
//! Depends only on `switchboard`, `serde_json` and `hickory-proto`; the HTTP target
//! reaches the router through a `send` function the caller provides (in-process
//! `oneshot` in the fuzz target, a real socket in the test).

#![allow(dead_code)] // Each includer uses only some of the checks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use serde_json::Value;
use switchboard::api::instances::{DrainBody, HeartbeatBody, RegisterBody};
use switchboard::cli::ServeArgs;
use switchboard::config::{Config, ConfigError, ProxyProtocol};
use switchboard::dns::{self, Transport, answer::Zone};
use switchboard::forwarder::proxy_protocol::{self, V2_SIGNATURE};
use switchboard::registry::validate;

// ---------------------------------------------------------------------------------
// Target 1: the field validators.
// ---------------------------------------------------------------------------------

/// Splits the input into lines and feeds every validator: each line (and the whole
/// input) as an address, service name, zone, tag and affinity key; numbers from the
/// lines' text and from the raw bytes; the lines as tags and `k=v` lines as metadata.
pub fn validators(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    for field in std::iter::once(text.as_ref()).chain(lines.iter().copied()) {
        check_address(field);
        check_service_name(field);
        check_label(field);
        check_affinity_key(field);
        if let Ok(n) = field.trim().parse::<i64>() {
            check_numbers(n);
        }
    }
    for chunk in data.chunks(8) {
        let mut raw = [0u8; 8];
        raw[..chunk.len()].copy_from_slice(chunk);
        check_numbers(i64::from_le_bytes(raw));
    }
    check_tags(lines.iter().map(|s| (*s).to_owned()).collect());
    let metadata: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    check_metadata(metadata);
}

/// A valid address comes back canonical, and the canonical form is a fixed point.
fn check_address(raw: &str) {
    match validate::address(raw) {
        Ok(canon) => {
            assert_eq!(
                validate::address(&canon).as_ref(),
                Ok(&canon),
                "canonical form of {raw:?} is not a fixed point"
            );
            let (host, port) = canon.rsplit_once(':').expect("canonical has a port");
            let port: u16 = port.parse().expect("canonical port is digits");
            assert_ne!(port, 0, "{raw:?}: port 0 accepted");
            assert_eq!(canon, canon.to_ascii_lowercase(), "{raw:?}: not lower-case");
            // An IP host reads back as the same socket address, in the same text.
            let is_ip = host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok();
            if is_ip {
                let sock: SocketAddr = canon
                    .parse()
                    .unwrap_or_else(|_| panic!("{raw:?} -> {canon:?} is not a socket address"));
                assert_eq!(sock.to_string(), canon, "{raw:?}: IP not in standard text");
            } else {
                assert!(
                    host.len() <= 253 && host.is_ascii(),
                    "{raw:?}: bad host {host:?}"
                );
            }
        }
        Err(e) => assert_eq!(e.code, "invalid_address", "{raw:?}"),
    }
}

fn check_service_name(raw: &str) {
    let expected = !raw.is_empty()
        && raw.len() <= validate::SERVICE_NAME_MAX
        && raw.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'.' | b'_' | b'-'))
        });
    match validate::service_name(raw) {
        Ok(()) => assert!(expected, "service name {raw:?} accepted"),
        Err(e) => {
            assert!(!expected, "service name {raw:?} rejected: {e}");
            assert_eq!(e.code, "invalid_service");
        }
    }
}

/// Zones and tags share one label rule and come back unchanged.
fn check_label(raw: &str) {
    let expected = !raw.is_empty()
        && raw.len() <= validate::LABEL_MAX
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    for (got, code) in [
        (validate::zone(Some(raw)), "invalid_zone"),
        (validate::tag(Some(raw)), "invalid_tag"),
    ] {
        match got {
            Ok(v) => {
                assert!(expected, "label {raw:?} accepted");
                assert_eq!(v.as_deref(), Some(raw));
            }
            Err(e) => {
                assert!(!expected, "label {raw:?} rejected: {e}");
                assert_eq!(e.code, code);
            }
        }
    }
    assert_eq!(validate::zone(None), Ok(None));
    assert_eq!(validate::tag(None), Ok(None));
}

fn check_affinity_key(raw: &str) {
    let expected = (1..=validate::KEY_MAX).contains(&raw.len());
    match validate::affinity_key(raw) {
        Ok(()) => assert!(expected, "key of {} bytes accepted", raw.len()),
        Err(e) => {
            assert!(!expected, "key of {} bytes rejected", raw.len());
            assert_eq!(e.code, "invalid_key");
        }
    }
}

/// Each numeric field accepts exactly its range and returns the value given.
fn check_numbers(n: i64) {
    let in_range = |r: std::ops::RangeInclusive<i64>| r.contains(&n);
    match validate::weight(Some(n)) {
        Ok(w) => assert!(
            in_range(validate::WEIGHT_RANGE) && i64::from(w) == n,
            "weight {n}"
        ),
        Err(e) => assert!(!in_range(validate::WEIGHT_RANGE) && e.code == "invalid_weight"),
    }
    match validate::ttl_secs(Some(n)) {
        Ok(t) => assert!(
            in_range(validate::TTL_RANGE) && i64::from(t) == n,
            "ttl {n}"
        ),
        Err(e) => assert!(!in_range(validate::TTL_RANGE) && e.code == "invalid_ttl"),
    }
    match validate::evacuate_per_sec(Some(n)) {
        Ok(r) => assert!(
            in_range(1..=validate::EVACUATE_PER_SEC_MAX) && r.map(i64::from) == Some(n),
            "evacuate_per_sec {n}"
        ),
        Err(e) => assert!(
            !in_range(1..=validate::EVACUATE_PER_SEC_MAX) && e.code == "invalid_evacuate_per_sec"
        ),
    }
    match validate::max_connections(Some(n)) {
        Ok(m) => assert!(n >= 1 && m == u64::try_from(n).ok(), "max_connections {n}"),
        Err(e) => assert!(n < 1 && e.code == "invalid_max_connections"),
    }
    assert_eq!(validate::weight(None), Ok(validate::DEFAULT_WEIGHT));
    assert_eq!(validate::ttl_secs(None), Ok(validate::DEFAULT_TTL_SECS));
    assert_eq!(validate::evacuate_per_sec(None), Ok(None));
    assert_eq!(validate::max_connections(None), Ok(None));
}

fn check_tags(raw: Vec<String>) {
    let n = raw.len();
    match validate::tags(raw.clone()) {
        Ok(tags) => {
            assert!(n <= validate::TAGS_MAX, "{n} tags accepted");
            assert_eq!(tags, raw);
            for t in &tags {
                assert!(
                    validate::tag(Some(t)).is_ok(),
                    "tag {t:?} in tags but not a tag"
                );
            }
        }
        Err(e) => assert_eq!(e.code, "invalid_tags"),
    }
}

fn check_metadata(raw: BTreeMap<String, String>) {
    let entries = raw.len();
    let bytes: usize = raw.iter().map(|(k, v)| k.len() + v.len()).sum();
    match validate::metadata(raw.clone()) {
        Ok(m) => {
            assert!(
                entries <= validate::METADATA_MAX_ENTRIES,
                "{entries} entries accepted"
            );
            assert!(
                bytes <= validate::METADATA_MAX_BYTES,
                "{bytes} bytes accepted"
            );
            assert!(
                m.keys()
                    .all(|k| (1..=validate::LABEL_MAX).contains(&k.len()))
            );
            assert_eq!(m, raw);
        }
        Err(e) => assert_eq!(e.code, "invalid_metadata"),
    }
}

// ---------------------------------------------------------------------------------
// Target 2: the JSON request bodies, through the real router.
// ---------------------------------------------------------------------------------

/// One HTTP request to the API.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// `X-Lease`, if sent.
    pub lease: Option<String>,
    /// Body bytes (sent as `application/json`).
    pub body: Vec<u8>,
}

/// Its answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The service every fuzzed request goes to.
pub const SERVICE: &str = "fuzz";
/// The fixture instance's address: one the fuzzer is unlikely to send.
pub const FIXTURE_ADDRESS: &str = "[2001:db8::f022]:65001";

/// An instance registered once, that heartbeats and drains are sent to.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Its id.
    pub id: String,
    /// Its current lease.
    pub lease: String,
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })
}

fn error_code(reply: &Reply) -> String {
    let v = json(&reply.body);
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error answer without error.code: {v}"))
        .to_owned()
}

/// Registers the fixture instance.
pub fn api_fixture(send: &mut dyn FnMut(Call) -> Reply) -> Fixture {
    let reply = send(Call {
        method: "POST",
        path: format!("/v1/services/{SERVICE}/instances"),
        lease: None,
        body: format!(r#"{{"address":"{FIXTURE_ADDRESS}","ttl_secs":300}}"#).into_bytes(),
    });
    assert!(matches!(reply.status, 200 | 201), "fixture: {reply:?}");
    let v = json(&reply.body);
    Fixture {
        id: v["id"].as_str().expect("id").to_owned(),
        lease: v["lease"].as_str().expect("lease").to_owned(),
    }
}

/// serde's derived `Deserialize` also reads a struct from a JSON array, its fields in
/// declaration order (`["10.0.0.5:1", 5]` is a register body): the object form of `v`.
fn as_object(v: Value, fields: &[&str]) -> Value {
    match v {
        Value::Array(items) => {
            Value::Object(fields.iter().map(|f| (*f).to_owned()).zip(items).collect())
        }
        other => other,
    }
}

/// `RegisterBody`'s fields in declaration order.
const REGISTER_FIELDS: [&str; 7] = [
    "address",
    "weight",
    "max_connections",
    "zone",
    "tags",
    "metadata",
    "ttl_secs",
];

/// The body as the API reads it: a blank body is `{}`.
fn as_read(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

/// The first byte picks the endpoint (register, heartbeat, drain), the rest is the body.
/// The answer must agree with what deserializing and validating the body says: 2xx for
/// a good body, 400 with the first failing field's code for a bad one, never 5xx.
pub fn api_body(data: &[u8], fixture: &mut Fixture, send: &mut dyn FnMut(Call) -> Reply) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => api_register(body, fixture, send),
        1 => api_heartbeat(body, fixture, send),
        _ => api_drain(body, fixture, send),
    }
}

/// What `RegisterBody::into_spec` (private) should decide: the code of the first field
/// that fails, in its order, or `None` when the body registers. `v` parsed as a
/// `RegisterBody`, so every field has the right JSON type.
fn expected_register(v: &Value) -> Option<&'static str> {
    let int = |k: &str| v.get(k).and_then(Value::as_i64);
    let strs = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let Some(address) = v.get("address").and_then(Value::as_str) else {
        return Some("invalid_address");
    };
    let metadata: BTreeMap<String, String> = v
        .get("metadata")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, x)| x.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let checks: [Result<(), validate::Invalid>; 7] = [
        validate::address(address).map(drop),
        validate::weight(int("weight")).map(drop),
        validate::max_connections(int("max_connections")).map(drop),
        validate::zone(v.get("zone").and_then(Value::as_str)).map(drop),
        validate::tags(strs("tags")).map(drop),
        validate::metadata(metadata).map(drop),
        validate::ttl_secs(int("ttl_secs")).map(drop),
    ];
    checks.into_iter().find_map(|c| c.err().map(|e| e.code))
}

fn api_register(body: &[u8], fixture: &mut Fixture, send: &mut dyn FnMut(Call) -> Reply) {
    let parsed = serde_json::from_slice::<RegisterBody>(as_read(body));
    let reply = send(Call {
        method: "POST",
        path: format!("/v1/services/{SERVICE}/instances"),
        lease: None,
        body: body.to_vec(),
    });
    assert!(reply.status < 500, "register answered {reply:?}");
    if parsed.is_err() {
        assert!(
            matches!(reply.status, 400 | 413),
            "bad JSON registered: {reply:?}"
        );
        return;
    }
    let v: Value = serde_json::from_slice(as_read(body)).expect("parsed as RegisterBody");
    let v = as_object(v, &REGISTER_FIELDS);
    match expected_register(&v) {
        Some(code) => {
            assert_eq!(
                reply.status, 400,
                "invalid body ({code}) answered {reply:?}"
            );
            assert_eq!(error_code(&reply), code, "{reply:?}");
        }
        None => {
            assert!(
                matches!(reply.status, 200 | 201),
                "good body answered {reply:?}"
            );
            let answer = json(&reply.body);
            let id = answer["id"].as_str().expect("id").to_owned();
            let lease = answer["lease"].as_str().expect("lease").to_owned();
            if id == fixture.id {
                // The fuzzer re-registered the fixture's address: same id, new lease.
                fixture.lease = lease;
            } else {
                // Leave nothing behind, so executions stay independent and fast.
                let gone = send(Call {
                    method: "DELETE",
                    path: format!("/v1/services/{SERVICE}/instances/{id}"),
                    lease: Some(lease),
                    body: Vec::new(),
                });
                assert_eq!(gone.status, 204, "deregister: {gone:?}");
            }
        }
    }
}

fn api_heartbeat(body: &[u8], fixture: &mut Fixture, send: &mut dyn FnMut(Call) -> Reply) {
    let parsed = serde_json::from_slice::<HeartbeatBody>(as_read(body));
    let reply = send(Call {
        method: "PUT",
        path: format!("/v1/services/{SERVICE}/instances/{}/heartbeat", fixture.id),
        lease: Some(fixture.lease.clone()),
        body: body.to_vec(),
    });
    assert!(reply.status < 500, "heartbeat answered {reply:?}");
    match parsed {
        Ok(_) => {
            assert_eq!(reply.status, 200, "good heartbeat answered {reply:?}");
            let v = json(&reply.body);
            assert!(v["ttl_secs"].is_u64() && v["shed"].is_u64(), "{v}");
        }
        Err(_) => {
            assert!(
                matches!(reply.status, 400 | 413),
                "bad heartbeat answered {reply:?}"
            );
            error_code(&reply);
        }
    }
}

fn api_drain(body: &[u8], fixture: &mut Fixture, send: &mut dyn FnMut(Call) -> Reply) {
    let parsed = serde_json::from_slice::<Option<DrainBody>>(as_read(body));
    let reply = send(Call {
        method: "POST",
        path: format!("/v1/services/{SERVICE}/instances/{}/drain", fixture.id),
        lease: Some(fixture.lease.clone()),
        body: body.to_vec(),
    });
    assert!(reply.status < 500, "drain answered {reply:?}");
    if parsed.is_err() {
        assert!(
            matches!(reply.status, 400 | 413),
            "bad drain answered {reply:?}"
        );
        error_code(&reply);
        return;
    }
    let v: Value = serde_json::from_slice(as_read(body)).expect("parsed as DrainBody");
    let v = as_object(v, &["evacuate_per_sec"]);
    let rate = v.get("evacuate_per_sec").and_then(Value::as_i64);
    match validate::evacuate_per_sec(rate) {
        Ok(_) => {
            assert_eq!(reply.status, 200, "good drain answered {reply:?}");
            assert_eq!(json(&reply.body)["draining"], Value::Bool(true));
        }
        Err(e) => {
            assert_eq!(reply.status, 400, "{reply:?}");
            assert_eq!(error_code(&reply), e.code);
        }
    }
}

// ---------------------------------------------------------------------------------
// Target 3: the config file.
// ---------------------------------------------------------------------------------

/// Any UTF-8 text: `from_toml` never panics, an error says which key (or where the
/// TOML breaks), and an accepted file holds only valid values.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, &ServeArgs::default()) {
        Ok(c) => {
            for f in &c.forwards {
                assert!(validate::service_name(&f.service).is_ok(), "{f:?}");
                assert!(f.max_fails >= 1 && !f.connect_timeout.is_zero(), "{f:?}");
                assert!(!f.fail_timeout.is_zero(), "{f:?}");
                assert!(f.max_connections != Some(0), "{f:?}");
            }
            for s in &c.statics {
                assert!(validate::service_name(&s.service).is_ok(), "{s:?}");
                assert_eq!(validate::address(&s.address).as_ref(), Ok(&s.address));
                assert!(
                    validate::WEIGHT_RANGE.contains(&i64::from(s.weight)),
                    "{s:?}"
                );
            }
            assert!((0.0..=10.0).contains(&c.rebalance.tolerance));
            assert!((0.0..=1.0).contains(&c.rebalance.shed_max_ratio));
            assert!(c.http.ip().is_loopback() || c.insecure || !c.tokens.register.is_empty());
        }
        Err(e) => {
            let shown = e.to_string();
            match &e {
                ConfigError::Invalid { key, message } => {
                    assert!(!key.is_empty() && !message.is_empty(), "{e:?}");
                    assert!(
                        shown.contains(key.as_str()),
                        "{shown:?} does not name {key:?}"
                    );
                }
                ConfigError::Parse { message, .. } => assert!(!message.is_empty(), "{e:?}"),
                ConfigError::InsecureBind(addr) => assert!(!addr.ip().is_loopback()),
                ConfigError::Read { .. } => panic!("from_toml read a file: {e:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Target 4: the PROXY header encoder.
// ---------------------------------------------------------------------------------

/// Reads `n` bytes, zero-padded past the end.
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// One address from the input: flag bit 0 picks IPv6, bit 1 makes it v4-mapped.
fn socket_addr(flags: u8, data: &mut &[u8]) -> SocketAddr {
    let ip = if flags & 1 == 0 {
        IpAddr::V4(Ipv4Addr::from(take::<4>(data)))
    } else if flags & 2 != 0 {
        IpAddr::V6(Ipv4Addr::from(take::<4>(data)).to_ipv6_mapped())
    } else {
        IpAddr::V6(Ipv6Addr::from(take::<16>(data)))
    };
    SocketAddr::new(ip, u16::from_be_bytes(take::<2>(data)))
}

/// An IPv6 address that maps an IPv4 one counts as that IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both versions for any pair of addresses: v1 is ASCII, ends in CRLF, fits 107 bytes
/// and reads back to the addresses; v2 opens with the signature, its length field
/// matches, and its address block reads back.
pub fn proxy_header(data: &[u8]) {
    let mut rest = data;
    let [flags] = take::<1>(&mut rest);
    let client = socket_addr(flags >> 1, &mut rest);
    let local = socket_addr(flags >> 3, &mut rest);
    let (src, dst) = (unmapped(client.ip()), unmapped(local.ip()));
    let both_v4 = src.is_ipv4() && dst.is_ipv4();

    let v1 = proxy_protocol::header(ProxyProtocol::V1, client, local);
    assert!(v1.is_ascii(), "{client} {local}: v1 not ASCII");
    assert!(
        v1.len() <= 107,
        "{client} {local}: v1 is {} bytes",
        v1.len()
    );
    let text = std::str::from_utf8(&v1).expect("ASCII");
    let line = text
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("v1 without CRLF: {text:?}"));
    assert!(!line.contains(['\r', '\n']), "{text:?}");
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 6, "{text:?}");
    assert_eq!(parts[0], "PROXY");
    assert_eq!(parts[1], if both_v4 { "TCP4" } else { "TCP6" }, "{text:?}");
    let (s, d): (IpAddr, IpAddr) = (
        parts[2].parse().expect("src"),
        parts[3].parse().expect("dst"),
    );
    if both_v4 {
        assert_eq!((s, d), (src, dst), "{text:?}");
    } else {
        assert_eq!(
            (s, d),
            (IpAddr::V6(as_v6(src)), IpAddr::V6(as_v6(dst))),
            "{text:?}"
        );
    }
    assert_eq!(parts[4], client.port().to_string(), "{text:?}");
    assert_eq!(parts[5], local.port().to_string(), "{text:?}");

    let v2 = proxy_protocol::header(ProxyProtocol::V2, client, local);
    assert_eq!(v2[..12], V2_SIGNATURE, "{client} {local}");
    assert_eq!(v2[12], 0x21, "version 2, PROXY");
    let len = usize::from(u16::from_be_bytes([v2[14], v2[15]]));
    assert_eq!(v2.len(), 16 + len, "{client} {local}: length field {len}");
    let block = &v2[16..];
    let (ports, want_src, want_dst): (&[u8], Vec<u8>, Vec<u8>) = if both_v4 {
        assert_eq!((v2[13], len), (0x11, 12));
        let (IpAddr::V4(a), IpAddr::V4(b)) = (src, dst) else {
            unreachable!("both_v4")
        };
        (&block[8..], a.octets().to_vec(), b.octets().to_vec())
    } else {
        assert_eq!((v2[13], len), (0x21, 36));
        (
            &block[32..],
            as_v6(src).octets().to_vec(),
            as_v6(dst).octets().to_vec(),
        )
    };
    let n = want_src.len();
    assert_eq!(&block[..n], &want_src[..], "{client} {local}: v2 source");
    assert_eq!(
        &block[n..2 * n],
        &want_dst[..],
        "{client} {local}: v2 destination"
    );
    assert_eq!(ports[..2], client.port().to_be_bytes());
    assert_eq!(ports[2..4], local.port().to_be_bytes());
}

// ---------------------------------------------------------------------------------
// Target 5: DNS queries.
// ---------------------------------------------------------------------------------

/// The zone every fuzzed query goes to: one name server, 20 records per answer at most.
fn dns_zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        Zone::new("sb.example.com.", 5, 20, &["192.0.2.1".parse().unwrap()]).expect("zone")
    })
}

/// A fixed fleet: `mqtt` with 30 IPv4 and 30 IPv6 instances, a Unix socket and a host
/// name; `empty` with none; every other service unknown.
struct DnsFleet {
    mqtt: Vec<String>,
}

impl DnsFleet {
    fn get() -> &'static DnsFleet {
        static FLEET: OnceLock<DnsFleet> = OnceLock::new();
        FLEET.get_or_init(|| {
            let mut mqtt: Vec<String> = (1..=30)
                .flat_map(|i| {
                    [
                        format!("10.0.0.{i}:1883"),
                        format!("[2001:db8::{i:x}]:1883"),
                    ]
                })
                .collect();
            mqtt.insert(3, "unix:/x".to_owned());
            mqtt.insert(7, "broker.example.net:8883".to_owned());
            DnsFleet { mqtt }
        })
    }
}

impl dns::answer::Fleet for DnsFleet {
    fn ranked(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let list: &[String] = match service {
            "mqtt" => &self.mqtt,
            "empty" => &[],
            _ => return None,
        };
        Some(
            list.iter()
                .filter(|a| keep(a))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

/// Any bytes as a query over UDP and TCP: no panic; no answer to fewer than 12 bytes;
/// an answer decodes, is a response with the query's id, fits 512 bytes over UDP (or
/// the query's EDNS size, within 512..=1232), and is authoritative when it is NOERROR
/// or NXDOMAIN to one question inside the zone.
pub fn dns(data: &[u8]) {
    let zone = dns_zone();
    let query = Message::from_vec(data).ok();
    let udp_limit = match query.as_ref().and_then(|q| q.edns.as_ref()) {
        Some(edns) => edns.max_payload().clamp(512, dns::MAX_UDP_PAYLOAD),
        None => 512,
    };
    let in_zone = query.as_ref().is_some_and(|q| match q.queries.as_slice() {
        [question] => zone.apex().zone_of(&question.name().to_lowercase()),
        _ => false,
    });
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some((wire, rcode)) = dns::answer(zone, DnsFleet::get(), data, transport) else {
            continue;
        };
        assert!(
            data.len() >= 12,
            "{transport:?}: answer to {} bytes",
            data.len()
        );
        if transport == Transport::Udp {
            assert!(
                wire.len() <= usize::from(udp_limit),
                "UDP answer of {} bytes, limit {udp_limit}",
                wire.len()
            );
        }
        let answer = Message::from_vec(&wire)
            .unwrap_or_else(|e| panic!("{transport:?}: answer does not decode ({e}): {wire:?}"));
        let meta = &answer.metadata;
        assert_eq!(meta.message_type, MessageType::Response, "{transport:?}");
        assert_eq!(
            meta.id,
            u16::from_be_bytes([data[0], data[1]]),
            "{transport:?}"
        );
        let sent = meta.response_code;
        if matches!(sent, ResponseCode::NoError | ResponseCode::NXDomain) && in_zone {
            assert!(
                meta.authoritative,
                "{transport:?}: {sent} not authoritative"
            );
        }
        // What `answer` reports (the queries counter's label) is what was sent. By
        // number: 16 is BADVERS and BADSIG both, and decodes as BADSIG.
        assert_eq!(
            u16::from(rcode),
            u16::from(sent),
            "{transport:?}: reported {rcode}, sent {sent}"
        );
    }
}
