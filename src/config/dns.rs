//! `[dns]` and `--dns`: the load-aware DNS server's settings (SPEC 8), validated into
//! [`DnsConfig`].
//!
//! Must not bind sockets or know the zone's answers (`crate::dns` does).

use std::net::SocketAddr;

use super::error::{ConfigError, invalid};
use super::file::FileDns;

/// Default zone of the DNS server: `.internal` is reserved for private use (ICANN,
/// 2024), so it never shadows a public name.
pub const DEFAULT_DNS_DOMAIN: &str = "switchboard.internal.";
/// Default TTL of DNS answers (SPEC 8): a dead backend leaves caches within it.
pub const DEFAULT_DNS_TTL_SECS: u64 = 5;
/// Default records per DNS answer (SPEC 8).
pub const DEFAULT_DNS_ANSWERS: u64 = 3;

/// `[dns]`: the load-aware DNS server (SPEC 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP address.
    pub listen: SocketAddr,
    /// The zone, fully qualified, lower case.
    pub domain: String,
    /// TTL of every record (and of negative answers).
    pub ttl_secs: u32,
    /// Records per answer at most.
    pub answers: usize,
    /// The zone's name servers (`ns1`, `ns2`, ... in the zone): every node of a
    /// cluster, so that all answer the same. Default: `listen`'s IP, unless it is a
    /// wildcard.
    pub name_servers: Vec<std::net::IpAddr>,
    /// UDP queries per second per source address (unset = no limit); beyond it the
    /// answer is an empty one with TC set, so a real client asks again over TCP.
    pub queries_per_sec: Option<u32>,
}

/// `[dns]` and `--dns` (which sets `listen`, and alone turns the server on).
pub(super) fn validate_dns(
    file: Option<FileDns>,
    flag: Option<&str>,
) -> Result<Option<DnsConfig>, ConfigError> {
    if file.is_none() && flag.is_none() {
        return Ok(None);
    }
    let f = file.unwrap_or_default();
    let listen_text = flag.map(str::to_owned).or(f.listen).ok_or_else(|| {
        invalid(
            "dns.listen",
            "required (e.g. \"127.0.0.1:5353\"), or --dns <addr>",
        )
    })?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "dns.listen",
            format!("{listen_text:?} is not an IP:port address (e.g. 127.0.0.1:5353)"),
        )
    })?;
    let mut domain = f
        .domain
        .unwrap_or_else(|| DEFAULT_DNS_DOMAIN.to_owned())
        .to_ascii_lowercase();
    if !domain.ends_with('.') {
        domain.push('.');
    }
    let labels_ok = domain.len() <= 200
        && domain.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(invalid(
            "dns.domain",
            format!(
                "{domain:?}: expected a domain name such as \"sb.example.com\" (letters, digits, '-', at most 200 characters)"
            ),
        ));
    }
    let ttl_secs = match f.ttl_secs.unwrap_or(DEFAULT_DNS_TTL_SECS) {
        v @ 0..=86_400 => v as u32,
        _ => return Err(invalid("dns.ttl_secs", "must be within 0..=86400")),
    };
    let answers = match f.answers.unwrap_or(DEFAULT_DNS_ANSWERS) {
        v @ 1..=20 => v as usize,
        _ => {
            return Err(invalid(
                "dns.answers",
                "must be within 1..=20 (an answer must fit in 512 bytes)",
            ));
        }
    };
    let name_servers = match f.name_servers {
        Some(list) => list
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| invalid("dns.name_servers", format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None if listen.ip().is_unspecified() => Vec::new(),
        None => vec![listen.ip()],
    };
    if name_servers.len() > 13 {
        return Err(invalid(
            "dns.name_servers",
            "at most 13 (as the root zone has)",
        ));
    }
    if f.queries_per_sec == Some(0) {
        return Err(invalid(
            "dns.queries_per_sec",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(Some(DnsConfig {
        listen,
        domain,
        ttl_secs,
        answers,
        name_servers,
        queries_per_sec: f.queries_per_sec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn dns_is_off_unless_asked_and_its_bad_values_are_named() {
        let none = Config::from_toml("", &ServeArgs::default()).unwrap();
        assert_eq!(none.dns, None);
        let flag = ServeArgs {
            dns: Some("127.0.0.1:5353".into()),
            ..ServeArgs::default()
        };
        let dns = Config::from_toml("", &flag).unwrap().dns.unwrap();
        assert_eq!(
            (dns.domain.as_str(), dns.ttl_secs, dns.answers),
            (DEFAULT_DNS_DOMAIN, 5, 3)
        );
        assert_eq!(
            dns.name_servers,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let file = Config::from_toml(
            "[dns]\nlisten = \"0.0.0.0:53\"\ndomain = \"SB.Example.com\"",
            &ServeArgs::default(),
        )
        .unwrap()
        .dns
        .unwrap();
        assert_eq!(file.domain, "sb.example.com.");
        assert!(file.name_servers.is_empty(), "a wildcard is no name server");
        for (text, key) in [
            ("[dns]\ndomain = \"x.\"", "dns.listen"),
            ("[dns]\nlisten = \"nope\"", "dns.listen"),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\ndomain = \"a..b\"",
                "dns.domain",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\ndomain = \"a_b.c\"",
                "dns.domain",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nanswers = 0",
                "dns.answers",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nanswers = 21",
                "dns.answers",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nttl_secs = 86401",
                "dns.ttl_secs",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nqueries_per_sec = 0",
                "dns.queries_per_sec",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:53\"\nname_servers = [\"ns1\"]",
                "dns.name_servers",
            ),
        ] {
            let err = Config::from_toml(text, &ServeArgs::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let unknown = Config::from_toml("[dns]\nport = 53", &ServeArgs::default()).unwrap_err();
        assert!(unknown.to_string().contains("port"), "{unknown}");
    }
}
