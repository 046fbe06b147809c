//! Operational endpoints: `/healthz` (the process answers) and `/readyz` (the store
//! answers, can write after a failed write, and the server is not shutting down).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value, json};

use super::auth::{Access, Meta};
use crate::cluster::ClusterNode;

use super::AppState;
use super::error::ApiError;

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /metrics`: Prometheus text format (admin token when one is configured).
pub async fn metrics(
    State(state): State<AppState>,
    meta: Meta,
) -> Result<impl IntoResponse, ApiError> {
    state.tokens.check(&meta, Access::Admin)?;
    let lag = state.cluster.as_ref().map(ClusterNode::since_last_sync);
    let text = crate::metrics::render(&state.hub, lag);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// One forward listener in `GET /v1/forwarders`.
#[derive(Debug, Serialize)]
pub struct ForwarderDto {
    listen: String,
    service: String,
    active: u64,
    total: u64,
    refused: u64,
}

/// `GET /v1/forwarders`: every forward listener with its live counts (admin).
pub async fn forwarders(
    State(state): State<AppState>,
    meta: Meta,
) -> Result<Json<Value>, ApiError> {
    state.tokens.check(&meta, Access::Admin)?;
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
        })
        .collect();
    Ok(Json(json!({ "forwarders": listeners })))
}

/// `GET /readyz`.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::NotReady("shutting down".into()));
    }
    state
        .hub
        .ready()
        .await
        .map_err(|err| ApiError::NotReady(format!("store unavailable: {err}")))?;
    Ok(Json(json!({"status": "ready"})))
}
