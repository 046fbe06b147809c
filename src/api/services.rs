//! `GET /v1/services`: every service with its instance counts, total connections and
//! self-preservation flag.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Access, Meta};
use super::error::ApiError;

/// One service's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceDto {
    name: String,
    /// Live, not draining: handed out.
    live: u64,
    draining: u64,
    expired: u64,
    connections: u64,
    self_preservation: bool,
    version: u64,
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServicesAnswer {
    services: Vec<ServiceDto>,
}

/// `GET /v1/services`.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "admin",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every service with its counts", body = ServicesAnswer),
        (status = 401, description = "An admin token is configured and was not given", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn services(
    State(state): State<AppState>,
    meta: Meta,
) -> Result<Json<ServicesAnswer>, ApiError> {
    state.tokens.load().check(&meta, Access::Admin)?;
    let services = state
        .hub
        .summaries()
        .into_iter()
        .map(|s| ServiceDto {
            name: s.name,
            live: s.up,
            draining: s.draining,
            expired: s.expired,
            connections: s.connections,
            self_preservation: s.self_preservation,
            version: s.version,
        })
        .collect();
    Ok(Json(ServicesAnswer { services }))
}
