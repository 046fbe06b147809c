//! A forward listener's edge keys (SPEC 9): TLS termination (`tls_cert`, `tls_key`,
//! `tls_client_ca`, `tls_client_auth`, `tls_alpn`), `tls_handshake_timeout_ms`, and
//! SNI routing without termination (`sni_routes`), validated into [`EdgeConfig`], and
//! the route table's lookup.
//!
//! Must not read the PEM files (`tls::load` does, at start, in `check` and on reload)
//! nor parse a ClientHello (`forwarder/hello.rs` does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::file::FileForward;
use crate::registry::validate;
use crate::tls::{ClientAuth, TlsConfig};

/// Default `tls_handshake_timeout_ms` (SPEC 9): also how long a listener waits for a
/// ClientHello to route by, or an MQTT CONNECT to hash.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// A forward listener that terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTls {
    /// The certificate, key and client CA files (keys named `forward[i].tls_…`).
    pub files: TlsConfig,
    /// ALPN protocols offered, in order of preference (`tls_alpn`); empty: none.
    pub alpn: Vec<String>,
}

/// Where an SNI-routing listener sends a ClientHello, by its server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoutes {
    /// Exact names (lower case) and their services.
    exact: BTreeMap<String, String>,
    /// `*.b.example.com` as (`.b.example.com`, service), longest suffix first.
    wildcards: Vec<(String, String)>,
    /// The service of a hello that matches no route (the listener's `service`), or
    /// `None`: refused.
    fallback: Option<String>,
}

/// How [`SniRoutes::route`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniMatch<'a> {
    /// A route matched the name.
    Route(&'a str),
    /// No route matched (or the hello named no server): the listener's `service`.
    Fallback(&'a str),
    /// No route matched and the listener has no `service`.
    Refused,
}

impl SniRoutes {
    /// The service for a hello naming `server_name` (exact names before wildcards;
    /// names compare without regard to case).
    pub fn route(&self, server_name: Option<&str>) -> SniMatch<'_> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(service) = self.exact.get(&name) {
                return SniMatch::Route(service);
            }
            // `*.b.example.com` covers `x.b.example.com` and `y.x.b.example.com`, not
            // `b.example.com` itself (as nginx's and HAProxy's wildcards).
            if let Some((_, service)) = self
                .wildcards
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            {
                return SniMatch::Route(service);
            }
        }
        match &self.fallback {
            Some(service) => SniMatch::Fallback(service),
            None => SniMatch::Refused,
        }
    }

    /// Every service a route (or the fallback) can send to.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.exact
            .values()
            .chain(self.wildcards.iter().map(|(_, s)| s))
            .chain(self.fallback.iter())
            .map(String::as_str)
    }
}

/// The edge keys of one forward listener, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeConfig {
    /// TLS termination, when `tls_cert` and `tls_key` are set.
    pub tls: Option<ForwardTls>,
    /// SNI routing, when `sni_routes` is set.
    pub sni_routes: Option<SniRoutes>,
    /// Deadline for the TLS handshake, the ClientHello or the MQTT CONNECT.
    pub handshake_timeout: Duration,
}

/// The edge keys of `f` (listener `key`, e.g. `forward[0]`); `udp` when the listener
/// is UDP (none of them applies); `service` the listener's own service key.
pub(super) fn validate(key: &str, f: &FileForward, udp: bool) -> Result<EdgeConfig, ConfigError> {
    let named = |name: &str| format!("{key}.{name}");
    let set = [
        ("tls_cert", f.tls_cert.is_some()),
        ("tls_key", f.tls_key.is_some()),
        ("tls_client_ca", f.tls_client_ca.is_some()),
        ("tls_client_auth", f.tls_client_auth.is_some()),
        ("tls_alpn", f.tls_alpn.is_some()),
        (
            "tls_handshake_timeout_ms",
            f.tls_handshake_timeout_ms.is_some(),
        ),
        ("sni_routes", f.sni_routes.is_some()),
    ];
    if udp && let Some((name, _)) = set.iter().find(|(_, on)| *on) {
        return Err(invalid(
            named(name),
            "not for protocol = \"udp\" (TLS runs over TCP)",
        ));
    }
    let handshake_timeout = match f.tls_handshake_timeout_ms {
        Some(0) => {
            return Err(invalid(
                named("tls_handshake_timeout_ms"),
                "must be at least 1",
            ));
        }
        ms => Duration::from_millis(ms.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS)),
    };
    let tls = terminating(key, f)?;
    let sni_routes = match &f.sni_routes {
        None => None,
        Some(_) if tls.is_some() => {
            return Err(invalid(
                named("sni_routes"),
                "routes TLS without terminating it: leave out tls_cert and tls_key \
                 (the backends terminate), or sni_routes",
            ));
        }
        Some(table) => Some(routes(key, table, f.service.clone())?),
    };
    Ok(EdgeConfig {
        tls,
        sni_routes,
        handshake_timeout,
    })
}

/// `tls_cert` and `tls_key` (both or neither), the client CA rules as `[tls]`'s, ALPN.
fn terminating(key: &str, f: &FileForward) -> Result<Option<ForwardTls>, ConfigError> {
    let named = |name: &str| format!("{key}.{name}");
    let path = |name: &str, value: &Option<String>| match value {
        Some(v) if !v.trim().is_empty() => Ok(Some(PathBuf::from(v))),
        Some(_) => Err(invalid(named(name), "must be the path of a PEM file")),
        None => Ok(None),
    };
    let (cert, tls_key) = match (path("tls_cert", &f.tls_cert)?, path("tls_key", &f.tls_key)?) {
        (Some(cert), Some(tls_key)) => (cert, tls_key),
        (None, None) => {
            let needs_cert = [
                ("tls_client_ca", f.tls_client_ca.is_some()),
                ("tls_client_auth", f.tls_client_auth.is_some()),
                ("tls_alpn", f.tls_alpn.is_some()),
            ];
            if let Some((name, _)) = needs_cert.iter().find(|(_, on)| *on) {
                return Err(invalid(
                    named(name),
                    "needs tls_cert and tls_key: only a listener that terminates TLS uses it",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(invalid(named("tls_key"), "is required with tls_cert")),
        (None, Some(_)) => return Err(invalid(named("tls_cert"), "is required with tls_key")),
    };
    let client_auth = match f.tls_client_auth.as_deref() {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            return Err(invalid(
                named("tls_client_auth"),
                format!("{other:?}: expected \"none\", \"optional\" or \"required\""),
            ));
        }
    };
    let client_ca = path("tls_client_ca", &f.tls_client_ca)?;
    if client_auth != ClientAuth::None && client_ca.is_none() {
        return Err(invalid(
            named("tls_client_ca"),
            "is required when tls_client_auth is \"optional\" or \"required\": \
             the CA certificates device certificates are verified against",
        ));
    }
    let alpn = f.tls_alpn.clone().unwrap_or_default();
    if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(invalid(
            named("tls_alpn"),
            format!("{bad:?}: a protocol name is 1 to 255 bytes (e.g. \"mqtt\")"),
        ));
    }
    Ok(Some(ForwardTls {
        files: TlsConfig {
            key_prefix: format!("{key}.tls_"),
            cert,
            key: tls_key,
            client_ca,
            client_auth,
            register_requires_client_cert: false,
        },
        alpn,
    }))
}

/// The route table: names are DNS names (or `*.` and one), services valid names.
fn routes(
    key: &str,
    table: &BTreeMap<String, String>,
    fallback: Option<String>,
) -> Result<SniRoutes, ConfigError> {
    let named = format!("{key}.sni_routes");
    if table.is_empty() {
        return Err(invalid(named, "holds no route: name = \"service\""));
    }
    let mut exact = BTreeMap::new();
    let mut wildcards = Vec::new();
    for (name, service) in table {
        validate::service_name(service)
            .map_err(|e| invalid(format!("{named}.{name:?}"), e.message))?;
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if !is_dns_name(suffix) {
            return Err(invalid(
                format!("{named}.{name:?}"),
                "is not a server name: letters, digits, '-' and '.', or \"*.\" before one",
            ));
        }
        if wildcard {
            wildcards.push((format!(".{suffix}"), service.clone()));
        } else if exact.insert(lower.clone(), service.clone()).is_some() {
            return Err(invalid(
                format!("{named}.{name:?}"),
                "names a server another route names",
            ));
        }
    }
    wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    if wildcards.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid(named, "two wildcard routes for one suffix"));
    }
    if let Some(service) = &fallback {
        validate::service_name(service)
            .map_err(|e| invalid(format!("{key}.service"), e.message))?;
    }
    Ok(SniRoutes {
        exact,
        wildcards,
        fallback,
    })
}

/// Labels of letters, digits and `-`, joined by `.`; 253 bytes at most.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::{Config, SniMatch};

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, &ServeArgs::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn routes_match_exact_names_before_wildcards_and_fall_back() {
        let c = load(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"other\"\n\
             sni_routes = { \"a.example.com\" = \"svc-a\", \"*.b.example.com\" = \"svc-b\", \
             \"*.x.b.example.com\" = \"svc-x\", \"y.b.example.com\" = \"svc-y\" }",
        )
        .unwrap();
        let routes = c.forwards[0].edge.sni_routes.as_ref().unwrap();
        assert_eq!(
            routes.route(Some("a.example.com")),
            SniMatch::Route("svc-a")
        );
        assert_eq!(
            routes.route(Some("A.Example.COM.")),
            SniMatch::Route("svc-a")
        );
        assert_eq!(
            routes.route(Some("q.b.example.com")),
            SniMatch::Route("svc-b")
        );
        assert_eq!(
            routes.route(Some("p.q.b.example.com")),
            SniMatch::Route("svc-b")
        );
        assert_eq!(
            routes.route(Some("y.b.example.com")),
            SniMatch::Route("svc-y")
        );
        assert_eq!(
            routes.route(Some("z.x.b.example.com")),
            SniMatch::Route("svc-x")
        );
        assert_eq!(
            routes.route(Some("b.example.com")),
            SniMatch::Fallback("other")
        );
        assert_eq!(routes.route(None), SniMatch::Fallback("other"));

        let c = load(
            "[[forward]]\nlisten = \"127.0.0.1:0\"\nsni_routes = { \"a.example.com\" = \"svc-a\" }",
        )
        .unwrap();
        let routes = c.forwards[0].edge.sni_routes.as_ref().unwrap();
        assert_eq!(routes.route(Some("c.example.com")), SniMatch::Refused);
    }

    #[test]
    fn edge_keys_are_validated_and_named() {
        let base = "[[forward]]\nlisten = \"127.0.0.1:0\"\n";
        let cases = [
            ("tls_cert = \"c.pem\"", "forward[0].tls_key"),
            ("tls_key = \"k.pem\"", "forward[0].tls_cert"),
            ("tls_alpn = [\"mqtt\"]", "forward[0].tls_alpn"),
            (
                "tls_client_auth = \"required\"",
                "forward[0].tls_client_auth",
            ),
            (
                "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_auth = \"required\"",
                "forward[0].tls_client_ca",
            ),
            (
                "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_auth = \"maybe\"",
                "forward[0].tls_client_auth",
            ),
            (
                "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_alpn = [\"\"]",
                "forward[0].tls_alpn",
            ),
            (
                "tls_handshake_timeout_ms = 0",
                "forward[0].tls_handshake_timeout_ms",
            ),
            ("sni_routes = {}", "forward[0].sni_routes"),
            (
                "sni_routes = { \"bad name\" = \"a\" }",
                "forward[0].sni_routes",
            ),
            (
                "sni_routes = { \"a.com\" = \"Bad Service\" }",
                "forward[0].sni_routes",
            ),
            (
                "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nsni_routes = { \"a.com\" = \"a\" }",
                "forward[0].sni_routes",
            ),
            (
                "protocol = \"udp\"\ntls_cert = \"c.pem\"",
                "forward[0].tls_cert",
            ),
            (
                "protocol = \"udp\"\nhash = \"mqtt_client_id\"",
                "forward[0].hash",
            ),
            (
                "sni_routes = { \"a.com\" = \"a\" }\nhash = \"mqtt_client_id\"",
                "forward[0].hash",
            ),
        ];
        for (extra, named) in cases {
            let err = load(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(named), "{extra}: {err}");
        }
        let c = load(&format!(
            "{base}tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_alpn = [\"mqtt\"]\n\
             hash = \"mqtt_client_id\"\ntls_handshake_timeout_ms = 500"
        ))
        .unwrap();
        let edge = &c.forwards[0].edge;
        let tls = edge.tls.as_ref().unwrap();
        assert_eq!(tls.alpn, ["mqtt"]);
        assert_eq!(tls.files.key_name("cert"), "forward[0].tls_cert");
        assert_eq!(edge.handshake_timeout.as_millis(), 500);
        assert_eq!(c.forwards[0].service, "default");
    }
}
