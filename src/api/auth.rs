//! Bearer tokens of SPEC section 6: which token each endpoint needs, compared in
//! constant time. An unset token leaves its endpoints open (loopback default).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Admin endpoints, and drain/deregister without a lease. Also valid everywhere.
    pub admin: Option<String>,
    /// Registration; any of these.
    pub register: Vec<String>,
    /// `GET /servers`.
    pub read: Option<String>,
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

fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_of(headers.get(axum::http::header::AUTHORIZATION))
}

fn bearer_of(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The few headers the hot endpoints read, taken without cloning the header map.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// `Authorization`.
    pub authorization: Option<HeaderValue>,
    /// `X-Lease`.
    pub lease: Option<HeaderValue>,
    /// `Accept` asks for `text/plain` and not JSON.
    pub wants_text: bool,
}

impl Meta {
    /// The lease sent, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        Ok(Meta {
            authorization: headers.get(axum::http::header::AUTHORIZATION).cloned(),
            lease: headers.get("x-lease").cloned(),
            wants_text: headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json")),
        })
    }
}

/// Compares in constant time. Both sides are hashed first so that not even the
/// expected token's length shows in the timing.
fn matches(given: &str, expected: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let expected: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    bool::from(given.ct_eq(&expected))
}

impl Tokens {
    fn is_admin(&self, given: Option<&str>) -> bool {
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
    pub fn bearer_is_admin(&self, headers: &HeaderMap) -> bool {
        self.is_admin(bearer(headers))
    }

    /// Checks the request's bearer token for `access`.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when a token is configured and not presented.
    pub fn check(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        self.check_bearer(bearer(headers), access)
    }

    /// [`Tokens::check`] on headers taken as [`Meta`].
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when a token is configured and not presented.
    pub fn check_meta(&self, meta: &Meta, access: Access) -> Result<(), ApiError> {
        self.check_bearer(bearer_of(meta.authorization.as_ref()), access)
    }

    fn check_bearer(&self, given: Option<&str>, access: Access) -> Result<(), ApiError> {
        let expected: Vec<&str> = match access {
            Access::Register => self.register.iter().map(String::as_str).collect(),
            Access::Read => self.read.iter().map(String::as_str).collect(),
            Access::Admin => self.admin.iter().map(String::as_str).collect(),
        };
        let open = expected.is_empty() && (access != Access::Admin || self.admin.is_none());
        if open || self.is_admin(given) {
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

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn open_when_unset_and_checked_when_set() {
        let open = Tokens::default();
        assert!(open.check(&headers(None), Access::Register).is_ok());
        assert!(open.check(&headers(None), Access::Admin).is_ok());
        let set = Tokens {
            admin: Some("adm".into()),
            register: vec!["r1".into(), "r2".into()],
            read: None,
        };
        assert!(set.check(&headers(Some("r2")), Access::Register).is_ok());
        assert!(set.check(&headers(Some("adm")), Access::Register).is_ok());
        assert!(set.check(&headers(Some("x")), Access::Register).is_err());
        assert!(set.check(&headers(None), Access::Register).is_err());
        assert!(set.check(&headers(None), Access::Read).is_ok());
        assert!(set.check(&headers(Some("r1")), Access::Admin).is_err());
        assert!(set.check(&headers(Some("adm")), Access::Admin).is_ok());
    }
}
