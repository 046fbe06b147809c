//! [`Answer`]: a finished answer as plain parts (status, content type, further
//! headers, body bytes), what the cores of the hot routes return so that the axum
//! handlers and the hand-written HTTP/1.1 path (`fast/`) write the same bytes.
//!
//! Owns only that shape and its conversion into an axum response; knows no endpoint.

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One answer. The headers go out in this order: `content-type`, `extra`, then
/// `content-length` (added by axum on one path, by `fast/reply.rs` on the other).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// `Content-Type`, when the answer has one.
    pub content_type: Option<&'static str>,
    /// Further headers, lowercase names (as hyper writes them), values checked.
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// A JSON body (`application/json`, as axum's `Json` answers).
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
        Answer {
            status,
            content_type: Some("application/json"),
            extra: Vec::new(),
            body: body.into(),
        }
    }

    /// An empty answer with no content type (the request timeout's 503).
    pub fn empty(status: StatusCode) -> Answer {
        Answer {
            status,
            content_type: None,
            extra: Vec::new(),
            body: Bytes::new(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = Response::new(axum::body::Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = self.content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        for (name, value) in self.extra {
            headers.append(name, value);
        }
        response
    }
}
