//! The HTTP API of SPEC section 2: the router, its layers (body limit, timeout,
//! tracing) and the shared state. Handlers are thin: extract, validate, one hub call.
//!
//! Must not hold SQL or ranking math.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod instances;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod serve;
pub mod servers;
pub mod services;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cluster::ClusterNode;
use crate::forwarder::stats::ForwardBoard;
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
    /// This node's cluster state, in cluster mode (for the sync lag metric).
    pub cluster: Option<ClusterNode>,
    /// The forward listeners' live figures.
    pub forwarders: Arc<ForwardBoard>,
    /// Configured tokens (swapped whole on reload).
    pub tokens: arc_swap::ArcSwap<Tokens>,
    /// Per-source-address rate limits (swapped whole on reload).
    pub limits: arc_swap::ArcSwap<limits::RateLimits>,
    /// Set when shutdown begins, so `/readyz` fails first.
    pub shutting_down: Arc<AtomicBool>,
    /// Fires at shutdown; blocking queries answer at once instead of holding it up.
    pub shutdown: CancellationToken,
}

/// Records each request's duration by route (the matched pattern, never the raw
/// path: label values stay bounded), method and status.
async fn record_duration(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    durations::record(route, &method, response.status(), seconds);
    response
}

/// The request-duration histograms, one per route, method and status, looked up
/// without building their labels: the recorder's lookup by labels (three `String`s
/// and a hash of them per request) was a visible share of an empty route's cost.
mod durations {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use axum::http::{Method, StatusCode};
    use metrics::Histogram;

    /// A route's histograms by method and status.
    type ByStatus = HashMap<(Method, u16), Histogram>;

    thread_local! {
        /// Per thread, so a lookup takes no lock; bounded by routes × methods ×
        /// statuses, as the label set is.
        static HISTOGRAMS: RefCell<HashMap<String, ByStatus>> = RefCell::new(HashMap::new());
    }

    /// Records `seconds` for one request.
    pub(super) fn record(route: &str, method: &Method, status: StatusCode, seconds: f64) {
        HISTOGRAMS.with_borrow_mut(|routes| {
            if !routes.contains_key(route) {
                routes.insert(route.to_owned(), HashMap::new());
            }
            let by_status = routes.get_mut(route).expect("inserted above");
            let key = (method.clone(), status.as_u16());
            by_status
                .entry(key)
                .or_insert_with(|| {
                    metrics::histogram!(
                        crate::metrics::HTTP_DURATION,
                        "route" => route.to_owned(),
                        "method" => method.as_str().to_owned(),
                        "status" => status.as_u16().to_string(),
                    )
                })
                .record(seconds);
        });
    }
}

/// The router with every endpoint and layer. Routes are registered through
/// utoipa-axum, so each one is in `/openapi.json` by construction.
pub fn router(state: AppState) -> Router {
    let (routes, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(dashboard::page))
        .routes(routes!(servers::servers))
        .routes(routes!(services::services))
        .routes(routes!(instances::register, instances::listing))
        .routes(routes!(instances::deregister))
        .routes(routes!(instances::heartbeat))
        .routes(routes!(instances::drain))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::forwarders))
        .routes(routes!(openapi::openapi))
        .split_for_parts();
    openapi::publish(&document);
    routes
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(record_duration))
        .with_state(state)
}
