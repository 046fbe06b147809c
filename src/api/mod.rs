//! The HTTP API of SPEC section 2: the router, its layers (body limit, timeout,
//! tracing) and the shared state. Handlers are thin: extract, validate, one hub call.
//!
//! Must not hold SQL or ranking math.

pub mod auth;
pub mod error;
pub mod instances;
pub mod ops;
pub mod servers;
pub mod services;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::hub::Hub;
use auth::Tokens;
use error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Longest a request may run: above the 60 s of the longest blocking query.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// What every handler can reach; cloned per request, hence one `Arc`.
pub type AppState = Arc<Shared>;

/// The state behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The registry.
    pub hub: Hub,
    /// Configured tokens.
    pub tokens: Arc<Tokens>,
    /// Set when shutdown begins, so `/readyz` fails first.
    pub shutting_down: Arc<AtomicBool>,
    /// Fires at shutdown; blocking queries answer at once instead of holding it up.
    pub shutdown: CancellationToken,
}

/// The router with every endpoint and layer.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/servers", get(servers::servers))
        .route("/v1/services", get(services::services))
        .route(
            "/v1/services/{service}/instances",
            post(instances::register).get(instances::listing),
        )
        .route(
            "/v1/services/{service}/instances/{id}",
            axum::routing::delete(instances::deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(instances::heartbeat),
        )
        .route(
            "/v1/services/{service}/instances/{id}/drain",
            post(instances::drain),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
