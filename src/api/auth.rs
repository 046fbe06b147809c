//! Bearer tokens of SPEC section 6: which token each endpoint needs, compared in
//! constant time. An unset token leaves its endpoints open (loopback default). With
//! `[tls] register_requires_client_cert`, a backend's own writes also need the
//! verified client certificate its connection presented ([`Peer`]).

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::TokenConfig;

/// The token checker, built from the configured tokens. Holds only their SHA-256
/// digests, so neither memory dumps of it nor `Debug` show a token.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    admin: Option<Digest32>,
    register: Vec<Digest32>,
    read: Option<Digest32>,
    /// `[tls] register_requires_client_cert`.
    register_needs_client_cert: bool,
}

/// Who is at the other end of a connection: its address, and whether it presented a
/// client certificate that verified against `[tls] client_ca` (only then does rustls
/// keep one). Set per connection by `serve.rs`; the hyper path carries it as a
/// request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: std::net::SocketAddr,
    /// A verified client certificate was presented.
    pub client_cert: bool,
}

impl Peer {
    /// A peer on a plain connection.
    pub fn plain(addr: std::net::SocketAddr) -> Peer {
        Peer {
            addr,
            client_cert: false,
        }
    }
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Register instances.
    Register,
    /// Read the ranked list.
    Read,
    /// Administer.
    Admin,
}

/// The headers the API reads, taken without cloning the header map.
#[derive(Clone, Default)]
pub struct Meta {
    /// `Authorization`.
    pub authorization: Option<HeaderValue>,
    /// `X-Lease`.
    pub lease: Option<HeaderValue>,
    /// `Accept` asks for `text/plain` and not JSON.
    pub wants_text: bool,
    /// The client's address (absent when the router runs without a server).
    pub peer: Option<std::net::IpAddr>,
    /// The connection presented a verified client certificate.
    pub client_cert: bool,
}

impl Meta {
    /// The lease sent, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The token of `Authorization: Bearer <token>`, if any.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.authorization.as_ref()?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the lease are secrets: only whether they were given.
        f.debug_struct("Meta")
            .field("authorization", &self.authorization.is_some())
            .field("lease", &self.lease.is_some())
            .field("wants_text", &self.wants_text)
            .field("peer", &self.peer)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl Meta {
    /// From the headers the API reads (each header's first value, as `HeaderMap::get`
    /// gives it) and the connection's peer: one place for both HTTP paths.
    pub fn new(
        authorization: Option<HeaderValue>,
        lease: Option<HeaderValue>,
        accept: Option<&HeaderValue>,
        peer: Option<Peer>,
    ) -> Meta {
        Meta {
            authorization,
            lease,
            wants_text: accept
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json")),
            peer: peer.map(|p| p.addr.ip()),
            client_cert: peer.is_some_and(|p| p.client_cert),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        Ok(Meta::new(
            headers.get(axum::http::header::AUTHORIZATION).cloned(),
            headers.get("x-lease").cloned(),
            headers.get(axum::http::header::ACCEPT),
            parts.extensions.get::<Peer>().copied().or_else(|| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|info| Peer::plain(info.0))
            }),
        ))
    }
}

/// Compares in constant time. Both sides are hashed first so that not even the
/// expected token's length shows in the timing.
/// Compares digests in constant time: hashing first keeps a token's length secret.
fn matches(given: &Digest32, expected: &Digest32) -> bool {
    bool::from(given.ct_eq(expected))
}

impl Tokens {
    /// The checker for the configured tokens; `register_needs_client_cert` is
    /// `[tls] register_requires_client_cert`.
    pub fn new(config: &TokenConfig, register_needs_client_cert: bool) -> Self {
        Tokens {
            admin: config.admin.as_deref().map(digest),
            register: config.register.iter().map(|t| digest(t)).collect(),
            read: config.read.as_deref().map(digest),
            register_needs_client_cert,
        }
    }

    /// A backend's own writes (registering, heartbeating, draining or deregistering by
    /// lease) need a verified client certificate when `[tls]
    /// register_requires_client_cert` is set; the admin token stands for one.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when a certificate is needed and none verified.
    pub fn check_client_cert(&self, meta: &Meta) -> Result<(), ApiError> {
        if !self.register_needs_client_cert || meta.client_cert || self.bearer_is_admin(meta) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "a verified client certificate is required for this \
                 ([tls] register_requires_client_cert)",
            ))
        }
    }

    fn is_admin(&self, given: Option<&Digest32>) -> bool {
        match (given, &self.admin) {
            (Some(given), Some(admin)) => matches(given, admin),
            _ => false,
        }
    }

    /// Whether an admin token is configured.
    pub fn admin_configured(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether the request's bearer token is the admin token.
    pub fn bearer_is_admin(&self, meta: &Meta) -> bool {
        self.is_admin(meta.bearer().map(digest).as_ref())
    }

    /// Checks the request's bearer token for `access`.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when a token is configured and not presented.
    pub fn check(&self, meta: &Meta, access: Access) -> Result<(), ApiError> {
        let given = meta.bearer().map(digest);
        let given = given.as_ref();
        let expected: &[Digest32] = match access {
            Access::Register => &self.register,
            Access::Read => self.read.as_slice(),
            Access::Admin => self.admin.as_slice(),
        };
        if self.is_admin(given) {
            return Ok(());
        }
        if access == Access::Register {
            self.check_client_cert(meta)?;
        }
        let open = expected.is_empty() && (access != Access::Admin || self.admin.is_none());
        if open {
            return Ok(());
        }
        // Compare with every token so the time taken does not say which one matched.
        let ok = given.is_some_and(|g| expected.iter().fold(false, |acc, t| acc | matches(g, t)));
        if ok {
            Ok(())
        } else if given.is_none() {
            Err(ApiError::Unauthorized(
                "missing Authorization: Bearer <token>",
            ))
        } else {
            Err(ApiError::Unauthorized("wrong token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> Meta {
        Meta {
            authorization: token.map(|t| format!("Bearer {t}").parse().unwrap()),
            ..Meta::default()
        }
    }

    #[test]
    fn debug_shows_neither_token_nor_lease() {
        let meta = Meta {
            authorization: Some("Bearer sekrit-token".parse().unwrap()),
            lease: Some("sekrit-lease".parse().unwrap()),
            ..Meta::default()
        };
        let shown = format!("{meta:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        let tokens = Tokens::new(
            &TokenConfig {
                admin: Some("sekrit-admin".into()),
                register: vec!["sekrit-reg".into()],
                read: None,
            },
            false,
        );
        assert!(!format!("{tokens:?}").contains("sekrit"));
    }

    #[test]
    fn open_when_unset_and_checked_when_set() {
        let open = Tokens::default();
        assert!(open.check(&headers(None), Access::Register).is_ok());
        assert!(open.check(&headers(None), Access::Admin).is_ok());
        let set = Tokens::new(
            &TokenConfig {
                admin: Some("adm".into()),
                register: vec!["r1".into(), "r2".into()],
                read: None,
            },
            false,
        );
        assert!(set.check(&headers(Some("r2")), Access::Register).is_ok());
        assert!(set.check(&headers(Some("adm")), Access::Register).is_ok());
        assert!(set.check(&headers(Some("x")), Access::Register).is_err());
        assert!(set.check(&headers(None), Access::Register).is_err());
        assert!(set.check(&headers(None), Access::Read).is_ok());
        assert!(set.check(&headers(Some("r1")), Access::Admin).is_err());
        assert!(set.check(&headers(Some("adm")), Access::Admin).is_ok());
    }

    #[test]
    fn a_client_certificate_is_needed_to_register_when_configured() {
        let with_cert = |token: Option<&str>, client_cert: bool| Meta {
            client_cert,
            ..headers(token)
        };
        let cert_only = Tokens::new(&TokenConfig::default(), true);
        assert!(
            cert_only
                .check(&with_cert(None, true), Access::Register)
                .is_ok()
        );
        assert!(
            cert_only
                .check(&with_cert(None, false), Access::Register)
                .is_err()
        );
        assert!(
            cert_only
                .check_client_cert(&with_cert(None, false))
                .is_err()
        );
        // Reads are not guarded by it.
        assert!(
            cert_only
                .check(&with_cert(None, false), Access::Read)
                .is_ok()
        );
        let both = Tokens::new(
            &TokenConfig {
                admin: Some("adm".into()),
                register: vec!["r1".into()],
                read: None,
            },
            true,
        );
        assert!(
            both.check(&with_cert(Some("r1"), true), Access::Register)
                .is_ok()
        );
        assert!(
            both.check(&with_cert(Some("r1"), false), Access::Register)
                .is_err()
        );
        assert!(
            both.check(&with_cert(None, true), Access::Register)
                .is_err()
        );
        // The admin token stands for the certificate (operator commands).
        assert!(
            both.check(&with_cert(Some("adm"), false), Access::Register)
                .is_ok()
        );
        assert!(
            both.check_client_cert(&with_cert(Some("adm"), false))
                .is_ok()
        );
    }
}
