//! Operational endpoints: `/healthz` (the process answers) and `/readyz` (the store
//! answers, can write after a failed write, and the server is not shutting down).

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::{Access, Meta};
use crate::cluster::ClusterNode;

use super::AppState;
use super::answer::Answer;
use super::error::ApiError;

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> Answer {
    healthz_answer()
}

/// The answer of `GET /healthz`, for both HTTP paths.
pub fn healthz_answer() -> Answer {
    // Fixed bytes: serialising a JSON value was a tenth of this route's cost, and
    // load balancers and watchdogs ask it often.
    Answer::json(
        axum::http::StatusCode::OK,
        axum::body::Bytes::from_static(br#"{"status":"ok"}"#),
    )
}

/// `GET /metrics`: Prometheus text format (admin token when one is configured).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "An admin token is configured and was not given", body = crate::api::openapi::ErrorBody)
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    meta: Meta,
) -> Result<impl IntoResponse, ApiError> {
    state.tokens.load().check(&meta, Access::Admin)?;
    let lag = state.cluster.as_ref().map(ClusterNode::since_last_sync);
    let text = super::scrape::render(
        &state.hub,
        &state.scraped,
        &state.forwarders.snapshot(),
        state.forwarders.fds(),
        lag,
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// One forward listener in `GET /v1/forwarders`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwarderDto {
    listen: String,
    /// The service; for an SNI-routing listener, that of hellos no route matches
    /// (empty: refused).
    service: String,
    active: u64,
    total: u64,
    refused: u64,
    /// TLS handshakes by result (`ok`, `failed`, `timeout`); all 0 without `tls_cert`.
    tls_handshakes: BTreeMap<&'static str, u64>,
    /// ClientHellos by result (`routed`, `default`, `refused`, `malformed`, `timeout`);
    /// all 0 without `sni_routes`.
    sni: BTreeMap<&'static str, u64>,
    /// MQTT CONNECTs by result (`keyed`, `empty`, `malformed`, `timeout`); all 0
    /// without `hash = "mqtt_client_id"`.
    mqtt_affinity: BTreeMap<&'static str, u64>,
}

/// Answer of `GET /v1/forwarders`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwardersAnswer {
    forwarders: Vec<ForwarderDto>,
}

/// `GET /v1/forwarders`: every forward listener with its live counts (admin).
#[utoipa::path(get, path = "/v1/forwarders", tag = "admin",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Forward listeners with their live counts", body = ForwardersAnswer),
        (status = 401, description = "An admin token is configured and was not given", body = crate::api::openapi::ErrorBody)
    ))]
pub async fn forwarders(
    State(state): State<AppState>,
    meta: Meta,
) -> Result<Json<ForwardersAnswer>, ApiError> {
    state.tokens.load().check(&meta, Access::Admin)?;
    let listeners: Vec<ForwarderDto> = state
        .forwarders
        .snapshot()
        .into_iter()
        .map(|s| ForwarderDto {
            listen: s.listen.to_string(),
            service: s.service,
            active: s.active,
            total: s.total,
            refused: s.refused,
            tls_handshakes: s.edge.tls_results().collect(),
            sni: s.edge.sni_results().collect(),
            mqtt_affinity: s.edge.mqtt_results().collect(),
        })
        .collect();
    Ok(Json(ForwardersAnswer {
        forwarders: listeners,
    }))
}

/// `GET /readyz`.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "The store answers and can write", body = Object),
        (status = 503, description = "Not ready: `not_ready` while shutting down, `store_unavailable` when the store cannot be reached or written (the node still answers reads and forwards from its last known state)", body = crate::api::openapi::ErrorBody)
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::NotReady("shutting down".into()));
    }
    // Its own code: a failover check may keep a node that only lost its store (it
    // still forwards) while it gives up one that is shutting down.
    state
        .hub
        .ready()
        .await
        .map_err(|err| ApiError::StoreUnavailable(format!("store unavailable: {err}")))?;
    match state.cleartext_warning.load().as_deref() {
        None => Ok(Json(json!({"status": "ready"}))),
        Some(warning) => Ok(Json(json!({"status": "ready", "warnings": [warning]}))),
    }
}

/// The warning an operator must see (at start, and in `/readyz`'s body): tokens
/// configured on an API that listens beyond loopback without `[tls]` cross the
/// network in clear, and so do leases.
pub fn cleartext_warning(config: &crate::config::Config) -> Option<String> {
    let tokens = &config.tokens;
    let any_token = tokens.admin.is_some() || !tokens.register.is_empty() || tokens.read.is_some();
    (config.tls.is_none() && any_token && !config.http.ip().is_loopback()).then(|| {
        format!(
            "the HTTP API listens on {} (not loopback) without [tls]: tokens and leases \
             travel in clear; set [tls] cert and key to serve HTTPS",
            config.http
        )
    })
}
