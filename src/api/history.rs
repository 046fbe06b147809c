//! `GET /v1/history[?service=<name>]`: the dashboard's history (see `history`): each
//! service's totals and each instance's connections, one sample per
//! `[dashboard] history_sample_secs`, oldest first. Owns the wire shape; reads the
//! history only, never a table.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Access, Meta};
use super::error::ApiError;
use super::limits::Limit;
use crate::history;
use crate::registry::validate;

/// Query string.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only this service (every service when absent; an unknown one: none).
    service: Option<String>,
}

/// Answer of `GET /v1/history`. Every series has one value per entry of `times_ms`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryAnswer {
    /// Seconds between two samples (`[dashboard] history_sample_secs`).
    sample_secs: u64,
    /// Samples kept per series at most (`history_minutes × 60 / history_sample_secs`).
    samples: usize,
    /// Unix milliseconds of each sample, oldest first.
    times_ms: Vec<u64>,
    /// By name.
    services: Vec<ServiceHistory>,
    /// Services present at the last sample without series of their own (over the cap
    /// of 64).
    untracked_services: u64,
}

/// One service's series; `null` where the service had no instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceHistory {
    name: String,
    /// Reported connections of live instances.
    connections: Vec<Option<u64>>,
    /// Instances live and not draining.
    up: Vec<Option<u64>>,
    /// Instances draining.
    draining: Vec<Option<u64>>,
    /// Instances expired, not yet removed.
    expired: Vec<Option<u64>>,
    /// Hand-outs (an instance put first in a `/servers` or DNS answer, or chosen by
    /// the forwarder) by this node in the interval that ends at the sample.
    hand_outs: Vec<Option<u64>>,
    /// Heartbeat answers with `shed` > 0 in the interval.
    shed_hints: Vec<Option<u64>>,
    /// Connections those answers asked to close.
    shed_connections: Vec<Option<u64>>,
    /// By address.
    instances: Vec<InstanceHistory>,
    /// Instances present at the last sample without a series of their own (over 32
    /// per service or 512 in all).
    untracked_instances: u64,
}

/// One instance's series.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceHistory {
    id: String,
    address: String,
    /// Reported connections while up or draining; `null` when absent or expired.
    connections: Vec<Option<u64>>,
    /// One character per sample: `-` absent, `u` up, `d` draining, `e` expired.
    states: String,
}

/// `GET /v1/history`.
#[utoipa::path(
    get,
    path = "/v1/history",
    tag = "admin",
    params(HistoryParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Each service's totals and each instance's connections over the last `history_minutes`", body = HistoryAnswer),
        (status = 400, description = "A bad service name", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "A read token is configured and was not given", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Over `[limits] read_per_sec` for this address; see Retry-After", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn history(
    State(state): State<AppState>,
    meta: Meta,
    Query(params): Query<HistoryParams>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    state.tokens.load().check(&meta, Access::Read)?;
    state.limits.load().check(Limit::Read, meta.peer)?;
    if let Some(service) = &params.service {
        validate::service_name(service)?;
    }
    let snapshot = state.history.snapshot(params.service.as_deref());
    Ok(Json(HistoryAnswer {
        sample_secs: state.history.sample_every().as_secs(),
        samples: snapshot.samples,
        times_ms: snapshot.times_ms,
        services: snapshot.services.into_iter().map(service).collect(),
        untracked_services: snapshot.untracked_services,
    }))
}

fn service(s: history::ServiceHistory) -> ServiceHistory {
    ServiceHistory {
        name: s.name,
        connections: s.connections,
        up: s.up,
        draining: s.draining,
        expired: s.expired,
        hand_outs: s.hand_outs,
        shed_hints: s.shed_hints,
        shed_connections: s.shed_connections,
        instances: s
            .instances
            .into_iter()
            .map(|i| InstanceHistory {
                id: i.id,
                address: i.address,
                connections: i.connections,
                states: i.states,
            })
            .collect(),
        untracked_instances: s.untracked_instances,
    }
}
