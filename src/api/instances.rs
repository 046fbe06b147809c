//! Instance endpoints (register, heartbeat, drain, deregister), their wire types; no SQL, no ranking.
//!
//! Wire types live here, beside their handlers; the admin listing is in
//! `instance_listing.rs`, its paths kept here.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::answer::Answer;
use super::auth::{Access, Meta};
use super::error::{ApiError, ApiJson, RawBody, parse_json};
use super::limits::Limit;
use super::{AppState, Shared};
use crate::clock::rfc3339;
use crate::hub::{Authority, HubError};
use crate::registry::table::InstanceView;
use crate::registry::{InstanceSpec, Origin, State as InstanceState, validate};

// The router's `routes!` names `instances::listing`, and with it `__path_listing`.
pub use super::instance_listing::{__path_listing, InstanceListing, listing};

/// Body of `POST /v1/services/{service}/instances`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// `host:port` (IPv6 as `[::1]:6666`), port 1..=65535. Required.
    #[schema(required, example = "10.0.0.5:6666")]
    address: Option<String>,
    /// 1..=1000 (default 1).
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<i64>,
    /// Handed out last at or above this count.
    #[schema(minimum = 1)]
    max_connections: Option<i64>,
    /// Zone label.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,64}$")]
    zone: Option<String>,
    /// At most 32 tags.
    #[serde(default)]
    #[schema(max_items = 32, value_type = Vec<crate::api::openapi::Label>)]
    tags: Vec<String>,
    /// At most 32 entries, 4 KiB in all.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// 1..=300 (default 15).
    #[schema(minimum = 1, maximum = 300)]
    ttl_secs: Option<i64>,
}

/// Body of `POST /v1/services/{service}/instances/{id}/drain` (optional: an empty
/// body drains without touching existing connections).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Paced evacuation: connections per second the instance is asked to close.
    #[schema(minimum = 1, maximum = 100000)]
    evacuate_per_sec: Option<i64>,
}

impl RegisterBody {
    /// Validates every field into a spec.
    fn into_spec(self) -> Result<InstanceSpec, ApiError> {
        let address = self.address.ok_or_else(|| {
            validate::Invalid::new("invalid_address", "address is required (host:port)")
        })?;
        Ok(InstanceSpec {
            address: validate::address(&address)?,
            weight: validate::weight(self.weight)?,
            max_connections: validate::max_connections(self.max_connections)?,
            zone: validate::zone(self.zone.as_deref())?,
            tags: validate::tags(self.tags)?,
            metadata: validate::metadata(self.metadata)?,
            ttl_secs: validate::ttl_secs(self.ttl_secs)?,
        })
    }
}

/// Answer of a registration (`Debug` leaves the lease out). Written by `write_json`;
/// this type is the schema in `/openapi.json` and the reference the writer is tested
/// against.
#[derive(Serialize, ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct RegisterAnswer {
    pub(crate) id: String,
    pub(crate) service: String,
    pub(crate) lease: String,
    pub(crate) ttl_secs: u32,
    pub(crate) heartbeat_secs: u32,
}

impl std::fmt::Debug for RegisterAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterAnswer")
            .field("id", &self.id)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Body of a heartbeat.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    connections: Option<u64>,
}

/// Answer of a heartbeat on the wire. Written by `write_json` from the core's
/// `registry::table::HeartbeatAnswer`; this twin exists for `/openapi.json` (utoipa's
/// schema derive, kept out of the registry core) and as the reference the writer is
/// tested against.
#[derive(Debug, Serialize, ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct HeartbeatAnswer {
    pub(crate) ttl_secs: u32,
    pub(crate) shed: u64,
}

/// One instance in the admin listing and the drain answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceDto {
    id: String,
    service: String,
    address: String,
    weight: u32,
    max_connections: Option<u64>,
    zone: Option<String>,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    ttl_secs: u32,
    /// `up`, `draining` or `expired`.
    #[schema(value_type = String, example = "up")]
    state: InstanceState,
    /// `registered` or `static` (from the config file).
    #[schema(value_type = String, example = "registered")]
    origin: Origin,
    draining: bool,
    connections: u64,
    pending: u64,
    load: f64,
    last_heartbeat_ms_ago: u64,
    registered_at: String,
}

impl InstanceDto {
    fn new(service: &str, view: InstanceView) -> Self {
        let i = view.instance;
        InstanceDto {
            pending: i.pending(),
            id: i.id,
            service: service.to_owned(),
            address: i.spec.address,
            weight: i.spec.weight,
            max_connections: i.spec.max_connections,
            zone: i.spec.zone,
            tags: i.spec.tags,
            metadata: i.spec.metadata,
            ttl_secs: i.spec.ttl_secs,
            state: view.state,
            origin: i.origin,
            draining: i.draining,
            connections: i.connections,
            load: view.load,
            last_heartbeat_ms_ago: view.last_heartbeat_ms_ago,
            registered_at: rfc3339(i.registered_at_unix_ms),
        }
    }
}

/// Who is asking for a drain or deregistration: the admin token wins, then the lease;
/// with neither, only an open (no admin token) registry lets the request through.
fn authority<'a>(state: &AppState, meta: &'a Meta) -> Result<Authority<'a>, ApiError> {
    if state.tokens.load().bearer_is_admin(meta) {
        return Ok(Authority::Admin);
    }
    match meta.lease() {
        Some(lease) => {
            state.tokens.load().check_client_cert(meta)?;
            Ok(Authority::Lease(lease))
        }
        None if !state.tokens.load().admin_configured() => Ok(Authority::Admin),
        None => Err(ApiError::Unauthorized(
            "send the instance's lease in X-Lease, or the admin token",
        )),
    }
}

/// `POST /v1/services/{service}/instances`.
#[utoipa::path(
    post,
    path = "/v1/services/{service}/instances",
    tag = "instances",
    params(("service" = String, Path, description = "Service name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    request_body = RegisterBody,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = RegisterAnswer),
        (status = 200, description = "The address was registered: fields and lease replaced, id kept", body = RegisterAnswer),
        (status = 400, description = "Invalid field or JSON", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "A register token is configured and was not given", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Over `[limits] register_per_sec` for this address; see Retry-After", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The store could not commit; nothing changed", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn register(
    State(state): State<AppState>,
    Path(service): Path<String>,
    meta: Meta,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.tokens.load().check(&meta, Access::Register)?;
    state.limits.load().check(Limit::Register, meta.peer)?;
    validate::service_name(&service)?;
    let spec = body.into_spec()?;
    let done = state.hub.register(&service, spec).await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // Debug, not info: registrations come from backends at fleet rates (a restart of
    // 10,000 re-registers 10,000), like heartbeats, which are not logged either; they
    // are counted in `switchboard_registrations_total`. Formatting and writing this
    // line was 5 % of a registration's CPU under the registry bench.
    tracing::debug!(%service, id = %done.id, created = done.created, "registered");
    Ok(super::write_json::registered(
        status,
        &done.id,
        &done.service,
        &done.lease,
        done.ttl_secs,
        done.heartbeat_secs,
    ))
}

/// `PUT /v1/services/{service}/instances/{id}/heartbeat`.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/heartbeat",
    tag = "instances",
    params(("service" = String, Path, description = "Service name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("id" = String, Path, description = "Instance id"), ("X-Lease" = String, Header, description = "The instance's lease")),
    request_body = HeartbeatBody,
    responses(
        (status = 200, description = "Alive; `shed` asks the backend to close that many connections", body = HeartbeatAnswer),
        (status = 400, description = "Invalid JSON", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Wrong lease", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown instance: register again", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    meta: Meta,
    RawBody(body): RawBody,
) -> Answer {
    heartbeat_answer(&state, &service, &id, &meta, &body)
}

/// The answer of a heartbeat, for both HTTP paths: the body (already read within
/// the limit), then the hub checks the lease and applies it.
pub fn heartbeat_answer(
    state: &Shared,
    service: &str,
    id: &str,
    meta: &Meta,
    body: &[u8],
) -> Answer {
    let beat = || -> Result<Answer, ApiError> {
        state.tokens.load().check_client_cert(meta)?;
        let body: HeartbeatBody = parse_json(body)?;
        let answer = match meta.lease() {
            Some(lease) => state.hub.heartbeat(service, id, lease, body.connections)?,
            // An unknown id still answers 404 (the backend registers again; no lease
            // matches the empty one); a known one is told the header is missing.
            None => match state.hub.heartbeat(service, id, "", body.connections) {
                Err(HubError::BadLease(_)) => {
                    return Err(ApiError::BadLease(format!(
                        "no X-Lease header: send the lease instance {id} was registered with"
                    )));
                }
                other => other?,
            },
        };
        Ok(Answer::json(
            StatusCode::OK,
            super::write_json::heartbeat_body(answer.ttl_secs, answer.shed),
        ))
    };
    beat().unwrap_or_else(|err| err.answer())
}

/// `POST /v1/services/{service}/instances/{id}/drain`.
#[utoipa::path(
    post,
    path = "/v1/services/{service}/instances/{id}/drain",
    tag = "instances",
    params(("service" = String, Path, description = "Service name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("id" = String, Path, description = "Instance id"), ("X-Lease" = Option<String>, Header, description = "The instance's lease (or use the admin token)")),
    request_body(content = Option<DrainBody>, description = "Optional paced evacuation"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Drained: never handed out again", body = InstanceDto),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Neither lease nor admin token", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Wrong lease", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown instance", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The store could not commit; nothing changed", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn drain(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    meta: Meta,
    ApiJson(body): ApiJson<Option<DrainBody>>,
) -> Result<Json<InstanceDto>, ApiError> {
    // No body, `{}` and `null` all drain without an evacuation.
    let body = body.unwrap_or_default();
    let who = authority(&state, &meta)?;
    let evacuate = validate::evacuate_per_sec(body.evacuate_per_sec)?;
    let view = state.hub.drain(&service, &id, evacuate, who).await?;
    tracing::info!(%service, %id, evacuate_per_sec = ?evacuate, "drained");
    Ok(Json(InstanceDto::new(&service, view)))
}

/// `DELETE /v1/services/{service}/instances/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/instances/{id}",
    tag = "instances",
    params(("service" = String, Path, description = "Service name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("id" = String, Path, description = "Instance id"), ("X-Lease" = Option<String>, Header, description = "The instance's lease (or use the admin token)")),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "Gone from every answer"),
        (status = 401, description = "Neither lease nor admin token", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Wrong lease", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown instance", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The store could not commit; nothing changed", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn deregister(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    meta: Meta,
) -> Result<StatusCode, ApiError> {
    let who = authority(&state, &meta)?;
    state.hub.deregister(&service, &id, who).await?;
    tracing::info!(%service, %id, "deregistered");
    Ok(StatusCode::NO_CONTENT)
}
