//! Reads one request head (httparse, as hyper does) and decides whether the fast
//! path answers it: one of the three hot routes, and simple (HTTP/1.0 or 1.1, no
//! Transfer-Encoding, Expect or Upgrade, one Content-Length within the body limit, a
//! target of plain URI characters). Everything else is [`Parsed::HandOff`], for
//! hyper to answer as it always did.
//!
//! Pure: owns the parse and the keep-alive rule (hyper's); no I/O, no answers.

use crate::api::BODY_LIMIT;

/// Longest head the fast path waits for; a longer one goes to hyper (which takes up
/// to its ~400 KiB buffer and answers 431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;

/// hyper's default limit on the number of headers (beyond it, 431).
const MAX_HEADERS: usize = 100;

/// A hot route, with what its core needs from the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'b> {
    /// `GET /healthz`.
    Healthz,
    /// `GET /servers`, with the query string (without `?`) if there is one.
    Servers(Option<&'b str>),
    /// `PUT /v1/services/{service}/instances/{id}/heartbeat`.
    Heartbeat {
        /// `{service}`.
        service: &'b str,
        /// `{id}`.
        id: &'b str,
    },
}

/// A head the fast path answers.
#[derive(Debug, Clone, Copy)]
pub struct Head<'b> {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// Bytes of the body that follows (Content-Length).
    pub body_len: usize,
    /// The route.
    pub route: Route<'b>,
    /// The request target, for the request's span.
    pub target: &'b str,
    /// HTTP/1.0 (answered as HTTP/1.0, as hyper does).
    pub http10: bool,
    /// Whether the connection stays open after the answer (hyper's rule: HTTP/1.1
    /// unless a `Connection` carries `close`; HTTP/1.0 only with `keep-alive`).
    pub keep_alive: bool,
    /// The first `Authorization`.
    pub authorization: Option<&'b [u8]>,
    /// The first `X-Lease`.
    pub lease: Option<&'b [u8]>,
    /// The first `Accept`.
    pub accept: Option<&'b [u8]>,
}

/// What the bytes at the start of a connection's buffer are.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// Not a whole head yet (and under [`MAX_HEAD`]).
    Partial,
    /// A head the fast path answers (its body may not have arrived yet).
    Hot(Head<'b>),
    /// Anything else: hyper answers it and the rest of the connection.
    HandOff,
}

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::HandOff;
    };
    let Some(route) = route(method, target) else {
        return Parsed::HandOff;
    };
    let http10 = version == 0;
    let mut head = Head {
        len,
        body_len: 0,
        route,
        target,
        http10,
        keep_alive: !http10,
        authorization: None,
        lease: None,
        accept: None,
    };
    let mut content_length = None;
    let mut saw_close = false;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Parsed::HandOff;
            }
            match decimal(value) {
                Some(n) if n <= BODY_LIMIT => content_length = Some(n),
                _ => return Parsed::HandOff,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            // As hyper: once any `Connection` asks to close, a later `keep-alive`
            // does not undo it; `keep-alive` matters only to HTTP/1.0.
            if saw_close || has_token(value, "close") {
                saw_close = true;
                head.keep_alive = false;
            } else if !head.keep_alive {
                head.keep_alive = has_token(value, "keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::HandOff;
        } else if name.eq_ignore_ascii_case(b"authorization") {
            head.authorization.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"x-lease") {
            head.lease.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"accept") {
            head.accept.get_or_insert(value);
        }
    }
    head.body_len = content_length.unwrap_or(0);
    // A body on a GET is not read by its handler; what hyper then does with it is
    // hyper's business.
    if head.body_len > 0 && !matches!(head.route, Route::Heartbeat { .. }) {
        return Parsed::HandOff;
    }
    Parsed::Hot(head)
}

/// The hot route of `method` and `target`, matched as the router matches it; `None`
/// for any other, and for a target with a byte outside the plain URI set or, in its
/// path, a `%` (the router percent-decodes path parameters; hyper and axum keep that).
fn route<'b>(method: &str, target: &'b str) -> Option<Route<'b>> {
    if !target.starts_with('/') || !target.bytes().all(plain) {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path.contains('%') {
        return None;
    }
    match method {
        "GET" if path == "/healthz" => Some(Route::Healthz),
        "GET" if path == "/servers" => Some(Route::Servers(query)),
        "PUT" => {
            let rest = path.strip_prefix("/v1/services/")?;
            let (service, rest) = rest.split_once('/')?;
            let rest = rest.strip_prefix("instances/")?;
            let id = rest.strip_suffix("/heartbeat")?;
            (!service.is_empty() && !id.is_empty() && !id.contains('/'))
                .then_some(Route::Heartbeat { service, id })
        }
        _ => None,
    }
}

/// RFC 3986's unreserved and reserved characters and `%`: what `http::Uri` takes in
/// a path and query whatever its version.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A Content-Length value: 1 to 19 ASCII digits.
fn decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a comma-separated header value carries `token` (hyper's test: the value
/// must be visible ASCII, tokens trimmed, compared case-insensitively).
fn has_token(value: &[u8], token: &str) -> bool {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return false;
    }
    std::str::from_utf8(value).is_ok_and(|text| {
        text.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(text: &str) -> Head<'_> {
        match parse(text.as_bytes()) {
            Parsed::Hot(head) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn handed_off(text: &str) -> bool {
        matches!(parse(text.as_bytes()), Parsed::HandOff)
    }

    #[test]
    fn the_three_routes_and_their_parameters() {
        assert_eq!(hot("GET /healthz HTTP/1.1\r\n\r\n").route, Route::Healthz);
        assert_eq!(
            hot("GET /servers?limit=5 HTTP/1.1\r\n\r\n").route,
            Route::Servers(Some("limit=5"))
        );
        assert_eq!(
            hot("GET /servers HTTP/1.1\r\n\r\n").route,
            Route::Servers(None)
        );
        let beat = hot(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nContent-Length: 2\r\nX-Lease: l\r\n\r\n{}",
        );
        assert_eq!(
            beat.route,
            Route::Heartbeat {
                service: "a",
                id: "b"
            }
        );
        assert_eq!((beat.body_len, beat.lease), (2, Some(&b"l"[..])));
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        assert!(handed_off("HEAD /healthz HTTP/1.1\r\n\r\n"));
        assert!(handed_off("POST /healthz HTTP/1.1\r\n\r\n"));
        assert!(handed_off("GET /healthz/ HTTP/1.1\r\n\r\n"));
        assert!(handed_off("GET /metrics HTTP/1.1\r\n\r\n"));
        assert!(handed_off(
            "GET /healthz HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b%20/heartbeat HTTP/1.1\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services//instances/b/heartbeat HTTP/1.1\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/c/heartbeat HTTP/1.1\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(handed_off("GET /servers HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(handed_off(
            "PUT /v1/services/a/instances/b/heartbeat HTTP/1.1\r\nContent-Length: +1\r\n\r\n"
        ));
        assert!(handed_off("GET /servers?a=\"b\" HTTP/1.1\r\n\r\n"));
        assert!(handed_off("GET http://x/servers HTTP/1.1\r\n\r\n"));
        assert!(handed_off("GET /healthz HTTP/2.0\r\n\r\n"));
        let many = format!("GET /healthz HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(101));
        assert!(handed_off(&many));
        let long = format!("GET /healthz HTTP/1.1\r\na: {}", "b".repeat(MAX_HEAD));
        assert!(handed_off(&long));
    }

    #[test]
    fn partial_heads_wait() {
        let full = "GET /servers HTTP/1.1\r\nHost: x\r\n\r\n";
        for end in 0..full.len() {
            assert!(
                matches!(parse(&full.as_bytes()[..end]), Parsed::Partial),
                "{end}"
            );
        }
    }

    #[test]
    fn keep_alive_as_hyper_decides_it() {
        let ka = |text: &str| hot(text).keep_alive;
        assert!(ka("GET /healthz HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(
            "GET /healthz HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"
        ));
        assert!(!ka("GET /healthz HTTP/1.0\r\n\r\n"));
        assert!(ka(
            "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(
            "GET /healthz HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(
            "GET /healthz HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }
}
