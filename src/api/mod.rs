//! The HTTP API of SPEC section 2: the router (in the per-request envelope of
//! `service.rs`) and the shared state. Handlers are thin: extract, validate, one hub call.
//!
//! Must not hold SQL or ranking math.

pub mod answer;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod fast;
pub mod history;
mod instance_listing;
pub mod instances;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod scrape;
pub mod sd;
pub mod serve;
pub mod servers;
pub mod service;
pub mod services;
pub mod write_json;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cluster::ClusterNode;
use crate::forwarder::stats::ForwardBoard;
use crate::hub::Hub;
use auth::Tokens;
use error::ApiError;

/// Largest accepted request body (read by [`error::RawBody`] and, on the fast path, by
/// `fast/`).
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
    /// The services `/metrics` last set gauges for.
    pub scraped: scrape::ScrapedServices,
    /// What `/readyz` says beside `ready` (tokens in clear), set again on reload.
    pub cleartext_warning: arc_swap::ArcSwapOption<String>,
    /// The dashboard's history (`GET /v1/history`), fed by `history::sampler`.
    pub history: Arc<crate::history::History>,
}

impl Shared {
    /// Takes the tokens and rate limits of a reloaded configuration (swapped whole),
    /// and says again whether they travel in clear.
    pub fn apply_settings(&self, config: &crate::config::Config) {
        self.cleartext_warning
            .store(ops::cleartext_warning(config).map(Arc::new));
        self.tokens.store(Arc::new(Tokens::new(
            &config.tokens,
            config.register_needs_client_cert(),
        )));
        self.limits.store(Arc::new(limits::RateLimits::new(
            config.limits.register_per_sec,
            config.limits.read_per_sec,
        )));
    }
}

/// The API: every endpoint, in the per-request envelope of [`service::Api`]. Routes
/// are registered through utoipa-axum, so each one is in `/openapi.json` by
/// construction, and the envelope labels requests by the same patterns.
pub fn router(state: AppState) -> service::Api {
    let state_for_fast = Arc::clone(&state);
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
        .routes(routes!(sd::prometheus))
        .routes(routes!(history::history))
        .routes(routes!(openapi::openapi))
        .split_for_parts();
    openapi::publish(&document);
    let patterns = document.paths.paths.keys().cloned();
    let router = routes
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    service::Api::new(router, patterns, state_for_fast)
}
