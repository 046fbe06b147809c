//! The one error type of the HTTP edge: every refusal becomes
//! `{"error": {"code", "message"}}` with its status. Only this module knows status codes.
//!
//! Also holds [`ApiJson`], the body extractor that answers malformed JSON in that shape.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::answer::Answer;
use crate::hub::HubError;
use crate::registry::validate::Invalid;
use crate::store::StoreError;

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field or parameter broke a rule (400 with the field's code).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The body is not the expected JSON (400 `invalid_json`).
    #[error("{0}")]
    BadJson(String),
    /// The body has a field the API does not know (400 `unknown_field`).
    #[error("{0}")]
    UnknownField(String),
    /// The body is over 64 KiB (413).
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// A token is missing or wrong (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The lease does not match the instance (403).
    #[error("{0}")]
    BadLease(String),
    /// The instance id is not known in the service (404 `unknown_instance`).
    #[error("{0}")]
    UnknownInstance(String),
    /// No such route (404 `not_found`).
    #[error("no such endpoint; see GET /openapi.json or the README")]
    NotFound,
    /// The route exists, the method does not (405).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The store is unreachable or failed; nothing was applied (503).
    #[error("the registry's store is unavailable, nothing was changed: {0}")]
    StoreUnavailable(String),
    /// The registry is not ready (503 `not_ready`).
    #[error("{0}")]
    NotReady(String),
    /// Over a per-address rate limit (429 `rate_limited`, with `Retry-After`).
    #[error("too many requests from this address; retry after {} s", .0.as_secs())]
    RateLimited(std::time::Duration),
}

impl ApiError {
    /// The HTTP status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid(invalid) => (StatusCode::BAD_REQUEST, invalid.code),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::UnknownField(_) => (StatusCode::BAD_REQUEST, "unknown_field"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadLease(_) => (StatusCode::FORBIDDEN, "bad_lease"),
            ApiError::UnknownInstance(_) => (StatusCode::NOT_FOUND, "unknown_instance"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(err: HubError) -> Self {
        match err {
            HubError::UnknownInstance { .. } => ApiError::UnknownInstance(format!(
                "{err}; it expired and was removed, or never existed: register again"
            )),
            HubError::BadLease(_) => ApiError::BadLease(err.to_string()),
            HubError::Store(store) => store.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(%err, "store call failed");
        ApiError::StoreUnavailable(err.to_string())
    }
}

impl ApiError {
    /// The answer: `{"error": {"code", "message"}}` with the status (and
    /// `Retry-After` for a rate limit), as both HTTP paths write it.
    pub fn answer(&self) -> Answer {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let body = serde_json::to_vec(&body).expect("a JSON value serialises");
        let mut answer = Answer::json(status, body);
        if let ApiError::RateLimited(wait) = self {
            answer.extra.push((
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.as_secs()),
            ));
        }
        answer
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.answer().into_response()
    }
}

/// A JSON body parsed strictly (unknown fields refused), with errors in the API's
/// shape and field-specific codes (`invalid_weight` for a bad `weight`). Any content
/// type is accepted, as tiny clients often send none. An empty body parses as `{}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The request body as bytes, read up to [`super::BODY_LIMIT`] (413 beyond), for a
/// handler that parses it with [`parse_json`] itself.
#[derive(Debug, Clone, Default)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        axum::body::to_bytes(req.into_body(), super::BODY_LIMIT)
            .await
            .map(RawBody)
            .map_err(|err| {
                let err = err.into_inner();
                if err.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadJson(format!("could not read the request body: {err}"))
                }
            })
    }
}

/// Parses a body as [`ApiJson`] does: strictly, an all-blank body as `{}`, errors
/// named after their field.
///
/// # Errors
/// [`ApiError::BadJson`], [`ApiError::UnknownField`] or a field's
/// [`ApiError::Invalid`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        classify(&path, &inner)
    })?;
    de.end()
        .map_err(|err| ApiError::BadJson(format!("trailing data after the JSON body: {err}")))?;
    Ok(value)
}

/// Names a JSON error after the field it happened in.
fn classify(path: &str, err: &serde_json::Error) -> ApiError {
    let message = err.to_string();
    if message.starts_with("unknown field") {
        return ApiError::UnknownField(message);
    }
    let field = path.split(['.', '[']).next().unwrap_or("");
    let code = match field {
        "address" => "invalid_address",
        "weight" => "invalid_weight",
        "ttl_secs" => "invalid_ttl",
        "max_connections" => "invalid_max_connections",
        "zone" => "invalid_zone",
        "tags" => "invalid_tags",
        "metadata" => "invalid_metadata",
        "connections" => "invalid_connections",
        _ => {
            return ApiError::BadJson(format!(
                "request body is not valid JSON for this endpoint: {message}"
            ));
        }
    };
    ApiError::Invalid(Invalid::new(code, format!("{field}: {message}")))
}
