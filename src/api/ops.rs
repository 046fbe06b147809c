//! Operational endpoints: `/healthz` (the process answers) and `/readyz` (the store
//! answers, can write after a failed write, and the server is not shutting down).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
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
