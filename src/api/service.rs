//! The API as one service around the router: what every request gets (its duration
//! recorded by route, method and status; a log line for a server error; the request
//! timeout; a debug span), done once per request here. As router layers the same work
//! cost more than a whole `/healthz`: axum wraps each route in every layer and clones
//! and boxes that stack on each request, and `from_fn` boxes again.
//!
//! Owns that per-request envelope, which the hand-written path of the hot routes
//! (`fast/`) goes through too ([`Api::finish`]); knows nothing of the endpoints and
//! holds no state but the router, the route patterns and the shared state it hands
//! to that path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tracing::Instrument;

use super::{AppState, REQUEST_TIMEOUT};

/// Label of a request whose path is no route's.
const UNMATCHED: &str = "unmatched";

/// The router with the per-request envelope; cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct Api {
    router: Router,
    /// The route patterns, to label a request by its route without a router layer:
    /// each pattern's index in `patterns`.
    routes: Arc<matchit::Router<usize>>,
    /// The patterns, then [`UNMATCHED`]; a request's label is one of these.
    patterns: Arc<[String]>,
    /// The handlers' state, for the hand-written path of the hot routes.
    state: AppState,
    /// The label indices of the hot routes.
    hot: HotRoutes,
}

/// The label indices (in `patterns`) of the routes `fast/` answers itself.
#[derive(Debug, Clone, Copy)]
pub struct HotRoutes {
    /// `GET /healthz`.
    pub healthz: usize,
    /// `GET /servers`.
    pub servers: usize,
    /// `PUT /v1/services/{service}/instances/{id}/heartbeat`.
    pub heartbeat: usize,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    /// The envelope around `router`, whose routes are `patterns` (axum's syntax,
    /// `/v1/services/{service}`). A pattern matchit refuses is left unlabelled
    /// (`unmatched`) rather than failing start-up: the label is for metrics only.
    pub fn new(router: Router, patterns: impl IntoIterator<Item = String>, state: AppState) -> Api {
        let mut routes = matchit::Router::new();
        let mut labels = Vec::new();
        for pattern in patterns {
            match routes.insert(pattern.clone(), labels.len()) {
                Ok(()) => labels.push(pattern),
                Err(err) => tracing::warn!(%pattern, %err, "route not labelled in request metrics"),
            }
        }
        labels.push(UNMATCHED.to_owned());
        let mut api = Api {
            router,
            routes: Arc::new(routes),
            patterns: labels.into(),
            state,
            hot: HotRoutes {
                healthz: 0,
                servers: 0,
                heartbeat: 0,
            },
        };
        api.hot = HotRoutes {
            healthz: api.route_of("/healthz"),
            servers: api.route_of("/servers"),
            heartbeat: api.route_of("/v1/services/s/instances/i/heartbeat"),
        };
        api
    }

    /// The handlers' state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The label indices of the hot routes.
    pub fn hot(&self) -> HotRoutes {
        self.hot
    }

    /// The index in `patterns` of the route `path` matches, else of `unmatched`: a
    /// bounded label, never the raw path.
    fn route_of(&self, path: &str) -> usize {
        self.routes
            .at(path)
            .map_or(self.patterns.len() - 1, |matched| *matched.value)
    }

    /// Answers one request.
    pub async fn call(&self, request: Request) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        let index = self.route_of(request.uri().path());
        // Disabled below debug, as TraceLayer's was: then it costs a level check.
        let span = tracing::debug_span!("request", %method, uri = %request.uri());
        let routed = self.router.clone().oneshot(request).instrument(span);
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, routed).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_elapsed) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        };
        self.finish(index, &method, response.status(), started.elapsed());
        response
    }

    /// What every answered request gets, on either HTTP path: a server error's log
    /// line (else a debug one) and its duration in the histogram of its route
    /// (`index` from [`Api::hot`] or the router's labels), method and status.
    pub fn finish(&self, index: usize, method: &Method, status: StatusCode, elapsed: Duration) {
        let route = self.patterns[index].as_str();
        if status.is_server_error() {
            tracing::error!(%method, route, status = status.as_u16(), latency = ?elapsed, "response failed");
        } else {
            tracing::debug!(%method, route, status = status.as_u16(), latency = ?elapsed, "request answered");
        }
        durations::record(index, route, method, status, elapsed.as_secs_f64());
    }
}

/// The request-duration histograms, one per route, method and status, looked up
/// without building their labels or hashing: the recorder's lookup by labels (three
/// `String`s and a hash of them per request) was a visible share of an empty route's
/// cost.
mod durations {
    use std::cell::RefCell;

    use axum::http::{Method, StatusCode};
    use metrics::Histogram;

    /// A route's label and its histograms by method and status.
    type Route = (String, Vec<(Method, u16, Histogram)>);

    thread_local! {
        /// Per thread, so a lookup takes no lock: by route index, the route's label
        /// (checked, should two routers in one process number routes differently),
        /// then a short list (a route sees one or two methods and a few statuses);
        /// bounded as the label set is.
        static HISTOGRAMS: RefCell<Vec<Route>> = const { RefCell::new(Vec::new()) };
    }

    /// Records `seconds` for one request to the route at `index`, labelled `route`.
    pub(super) fn record(
        index: usize,
        route: &str,
        method: &Method,
        status: StatusCode,
        seconds: f64,
    ) {
        let status = status.as_u16();
        HISTOGRAMS.with_borrow_mut(|routes| {
            if routes.len() <= index {
                routes.resize_with(index + 1, Default::default);
            }
            let (label, seen) = &mut routes[index];
            if label != route {
                route.clone_into(label);
                seen.clear();
            }
            let found = seen
                .iter()
                .position(|(m, s, _)| *s == status && m == method);
            let at = found.unwrap_or_else(|| {
                let histogram = metrics::histogram!(
                    crate::metrics::HTTP_DURATION,
                    "route" => route.to_owned(),
                    "method" => method.as_str().to_owned(),
                    "status" => status.to_string(),
                );
                seen.push((method.clone(), status, histogram));
                seen.len() - 1
            });
            seen[at].2.record(seconds);
        });
    }
}
