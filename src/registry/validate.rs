//! Field rules of SPEC section 2: service names, addresses, weights, TTLs, zones, tags
//! and metadata. Each failure names its field with a stable `code`.
//!
//! Pure: strings in, canonical values or a [`Invalid`] out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest service name: `[a-z0-9][a-z0-9._-]{0,62}`.
pub const SERVICE_NAME_MAX: usize = 63;
/// Weight range.
pub const WEIGHT_RANGE: std::ops::RangeInclusive<i64> = 1..=1000;
/// TTL range in seconds.
pub const TTL_RANGE: std::ops::RangeInclusive<i64> = 1..=300;
/// Default weight.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Default TTL in seconds.
pub const DEFAULT_TTL_SECS: u32 = 15;
/// Most metadata entries.
pub const METADATA_MAX_ENTRIES: usize = 32;
/// Most metadata bytes, keys and values together.
pub const METADATA_MAX_BYTES: usize = 4096;
/// Most tags.
pub const TAGS_MAX: usize = 32;
/// Longest tag, zone or metadata key.
pub const LABEL_MAX: usize = 64;
/// Longest affinity key.
pub const KEY_MAX: usize = 256;

/// A rejected field: `code` is the stable error code, `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// Stable snake_case code such as `invalid_address`.
    pub code: &'static str,
    /// Human text naming the field and the rule.
    pub message: String,
}

impl Invalid {
    /// A rejection with a code and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Checks a service name against `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// # Errors
/// `invalid_service` when it does not match.
pub fn service_name(name: &str) -> Result<(), Invalid> {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= SERVICE_NAME_MAX {
        Ok(())
    } else {
        Err(Invalid::new(
            "invalid_service",
            format!(
                "service name {name:?} must match [a-z0-9][a-z0-9._-]{{0,62}} (lower-case letters, digits, '.', '_', '-'; at most 63)"
            ),
        ))
    }
}

/// Checks `host:port` and returns its canonical form: IPv4 and bracketed IPv6 in their
/// standard text, host names lower-case. Port 1..=65535.
///
/// # Errors
/// `invalid_address` with the reason.
pub fn address(raw: &str) -> Result<String, Invalid> {
    let bad = |why: &str| {
        Invalid::new(
            "invalid_address",
            format!(
                "address {raw:?} {why}; expected host:port, e.g. 10.0.0.5:6666, [::1]:6666 or backend-1.local:6666"
            ),
        )
    };
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("has an IPv6 host without ]:port"))?;
        let ip: Ipv6Addr = v6.parse().map_err(|_| bad("has an invalid IPv6 host"))?;
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = raw.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if host.contains(':') {
            return Err(bad("has an IPv6 host that is not in brackets"));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            (ip.to_string(), port)
        } else if is_host_name(host) {
            (host.to_ascii_lowercase(), port)
        } else {
            return Err(bad("has an invalid host"));
        }
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("has a port outside 1..=65535"))?;
    Ok(format!("{host}:{port}"))
}

/// How a static instance names a Unix stream socket (nginx's `server unix:/path`).
pub const UNIX_PREFIX: &str = "unix:";

/// Longest Unix socket path: `sun_path` holds 108 bytes on Linux, the last a NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// The socket path of a `unix:/path` address; `None` for `host:port`.
pub fn unix_socket_path(address: &str) -> Option<&str> {
    address.strip_prefix(UNIX_PREFIX)
}

/// Checks a `[[static]]` address: `host:port` as [`address`], or `unix:` and an
/// absolute socket path (kept as written: the path is the file system's to judge).
///
/// # Errors
/// `invalid_address` with the reason.
pub fn static_address(raw: &str) -> Result<String, Invalid> {
    let Some(path) = unix_socket_path(raw) else {
        return address(raw);
    };
    let bad = |why: &str| {
        Invalid::new(
            "invalid_address",
            format!(
                "address {raw:?} {why}; expected unix:/absolute/path, e.g. unix:/run/backend.sock"
            ),
        )
    };
    if !path.starts_with('/') {
        // Relative to what the server's working directory happens to be: refused.
        return Err(bad("has a socket path that is not absolute"));
    }
    if path.contains('\0') {
        return Err(bad("has a NUL byte in its socket path"));
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(bad(&format!(
            "has a socket path longer than {UNIX_PATH_MAX} bytes"
        )));
    }
    Ok(raw.to_owned())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    // An all-numeric dotted host would be a mistyped IPv4 address.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Checks a weight (1..=1000).
///
/// # Errors
/// `invalid_weight`.
pub fn weight(raw: Option<i64>) -> Result<u32, Invalid> {
    match raw {
        None => Ok(DEFAULT_WEIGHT),
        Some(w) if WEIGHT_RANGE.contains(&w) => Ok(w as u32),
        Some(w) => Err(Invalid::new(
            "invalid_weight",
            format!("weight {w} is outside 1..=1000"),
        )),
    }
}

/// Checks a TTL (1..=300 seconds).
///
/// # Errors
/// `invalid_ttl`.
pub fn ttl_secs(raw: Option<i64>) -> Result<u32, Invalid> {
    match raw {
        None => Ok(DEFAULT_TTL_SECS),
        Some(t) if TTL_RANGE.contains(&t) => Ok(t as u32),
        Some(t) => Err(Invalid::new(
            "invalid_ttl",
            format!("ttl_secs {t} is outside 1..=300"),
        )),
    }
}

/// Checks `max_connections` (at least 1).
///
/// # Errors
/// `invalid_max_connections`.
pub fn max_connections(raw: Option<i64>) -> Result<Option<u64>, Invalid> {
    match raw {
        None => Ok(None),
        Some(m) if m >= 1 => Ok(Some(m as u64)),
        Some(m) => Err(Invalid::new(
            "invalid_max_connections",
            format!("max_connections {m} must be at least 1"),
        )),
    }
}

/// Checks a label (zone or tag): 1..=64 of letters, digits, `.`, `_`, `-`, `:`, `/`.
fn label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= LABEL_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

/// Checks a zone label.
///
/// # Errors
/// `invalid_zone`.
pub fn zone(raw: Option<&str>) -> Result<Option<String>, Invalid> {
    match raw {
        None => Ok(None),
        Some(z) if label(z) => Ok(Some(z.to_owned())),
        Some(z) => Err(Invalid::new(
            "invalid_zone",
            format!("zone {z:?} must be 1..=64 letters, digits or . _ - : /"),
        )),
    }
}

/// Largest paced evacuation rate, connections per second.
pub const EVACUATE_PER_SEC_MAX: i64 = 100_000;

/// Checks a drain's `evacuate_per_sec`: 1..=100000 when given.
///
/// # Errors
/// `invalid_evacuate_per_sec` when out of range.
pub fn evacuate_per_sec(raw: Option<i64>) -> Result<Option<u32>, Invalid> {
    match raw {
        None => Ok(None),
        Some(r) if (1..=EVACUATE_PER_SEC_MAX).contains(&r) => {
            Ok(Some(u32::try_from(r).expect("at most 100000")))
        }
        Some(r) => Err(Invalid::new(
            "invalid_evacuate_per_sec",
            format!("evacuate_per_sec {r} is outside 1..={EVACUATE_PER_SEC_MAX}"),
        )),
    }
}

/// Checks the `tag` filter of `/servers`: one label, as in `tags`.
///
/// # Errors
/// `invalid_tag` when it is not a label.
pub fn tag(raw: Option<&str>) -> Result<Option<String>, Invalid> {
    match raw {
        None => Ok(None),
        Some(t) if label(t) => Ok(Some(t.to_owned())),
        Some(t) => Err(Invalid::new(
            "invalid_tag",
            format!("tag {t:?} must be 1..=64 letters, digits or . _ - : /"),
        )),
    }
}

/// Checks tags: at most 32 labels.
///
/// # Errors
/// `invalid_tags`.
pub fn tags(raw: Vec<String>) -> Result<Vec<String>, Invalid> {
    if raw.len() > TAGS_MAX {
        return Err(Invalid::new(
            "invalid_tags",
            format!("{} tags given, at most {TAGS_MAX} allowed", raw.len()),
        ));
    }
    if let Some(bad) = raw.iter().find(|t| !label(t)) {
        return Err(Invalid::new(
            "invalid_tags",
            format!("tag {bad:?} must be 1..=64 letters, digits or . _ - : /"),
        ));
    }
    Ok(raw)
}

/// Checks metadata: at most 32 entries and 4 KiB of keys and values together.
///
/// # Errors
/// `invalid_metadata`.
pub fn metadata(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Invalid> {
    if raw.len() > METADATA_MAX_ENTRIES {
        return Err(Invalid::new(
            "invalid_metadata",
            format!(
                "metadata has {} entries, at most {METADATA_MAX_ENTRIES} allowed",
                raw.len()
            ),
        ));
    }
    let bytes: usize = raw.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > METADATA_MAX_BYTES {
        return Err(Invalid::new(
            "invalid_metadata",
            format!("metadata holds {bytes} bytes, at most {METADATA_MAX_BYTES} allowed"),
        ));
    }
    if let Some(bad) = raw.keys().find(|k| k.is_empty() || k.len() > LABEL_MAX) {
        return Err(Invalid::new(
            "invalid_metadata",
            format!("metadata key {bad:?} must be 1..=64 bytes"),
        ));
    }
    Ok(raw)
}

/// Checks an affinity key: 1..=256 bytes.
///
/// # Errors
/// `invalid_key`.
pub fn affinity_key(raw: &str) -> Result<(), Invalid> {
    if raw.is_empty() || raw.len() > KEY_MAX {
        return Err(Invalid::new(
            "invalid_key",
            format!("key must be 1..={KEY_MAX} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["default", "a", "mqtt-eu.1_x", &"a".repeat(63)] {
            assert!(service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", &"a".repeat(64), "é"] {
            assert_eq!(
                service_name(bad).unwrap_err().code,
                "invalid_service",
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses_are_checked_and_canonical() {
        assert_eq!(address("10.0.0.5:6666").unwrap(), "10.0.0.5:6666");
        assert_eq!(address("[::1]:6666").unwrap(), "[::1]:6666");
        assert_eq!(address("[0:0::1]:6666").unwrap(), "[::1]:6666");
        assert_eq!(address("Backend-1.Local:80").unwrap(), "backend-1.local:80");
        assert_eq!(address("localhost:65535").unwrap(), "localhost:65535");
        for bad in [
            "",
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "10.0.0.5:-1",
            "::1:80",
            "[::1]",
            "[zz::1]:80",
            "999.1.1.1:80",
            "-bad.host:80",
            "host name:80",
            ":80",
        ] {
            assert_eq!(address(bad).unwrap_err().code, "invalid_address", "{bad}");
        }
    }

    #[test]
    fn static_addresses_take_absolute_unix_paths_too() {
        assert_eq!(
            static_address("unix:/run/b.sock").unwrap(),
            "unix:/run/b.sock"
        );
        assert_eq!(static_address("Host:80").unwrap(), "host:80");
        assert_eq!(unix_socket_path("unix:/run/b.sock"), Some("/run/b.sock"));
        assert_eq!(unix_socket_path("10.0.0.5:6666"), None);
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        for bad in [
            "unix:",
            "unix:relative.sock",
            "unix:./b.sock",
            "unix:/a\0b",
            &long,
        ] {
            assert_eq!(
                static_address(bad).unwrap_err().code,
                "invalid_address",
                "{bad}"
            );
        }
        // Registrations stay host:port.
        assert!(address("unix:/run/b.sock").is_err());
    }

    #[test]
    fn numbers_have_ranges_and_defaults() {
        assert_eq!(weight(None).unwrap(), 1);
        assert_eq!(weight(Some(1000)).unwrap(), 1000);
        assert!(weight(Some(0)).is_err());
        assert!(weight(Some(1001)).is_err());
        assert_eq!(ttl_secs(None).unwrap(), 15);
        assert!(ttl_secs(Some(0)).is_err());
        assert!(ttl_secs(Some(301)).is_err());
        assert!(max_connections(Some(0)).is_err());
        assert_eq!(max_connections(Some(5)).unwrap(), Some(5));
    }

    #[test]
    fn metadata_limits() {
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(metadata(many).is_err());
        let big: BTreeMap<_, _> = [("k".to_string(), "v".repeat(4096))].into();
        assert!(metadata(big).is_err());
        let ok: BTreeMap<_, _> = [("build".to_string(), "1.4.2".to_string())].into();
        assert!(metadata(ok).is_ok());
    }
}
