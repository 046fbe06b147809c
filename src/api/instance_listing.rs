//! A service's admin listing, written from cached cards; not the writes (`instances.rs`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Access, Meta};
use super::error::ApiError;
use super::instances::InstanceDto;
use crate::clock::rfc3339;
use crate::registry::table::Card;
use crate::registry::{Origin, State as InstanceState, validate};

/// The admin listing: `{"service", "instances"}` (rendered from cached cards).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceListing {
    service: String,
    instances: Vec<InstanceDto>,
}

/// `GET /v1/services/{service}/instances`: every instance, all states.
///
/// The hottest admin answer (thousands of instances): each instance's fixed fields
/// are rendered once into a cached card, and only the moving fields are written per
/// request. The answer is `{"service": ..., "instances": [InstanceDto, ...]}`.
#[utoipa::path(
    get,
    path = "/v1/services/{service}/instances",
    tag = "admin",
    params(("service" = String, Path, description = "Service name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every instance, all states", body = InstanceListing),
        (status = 400, description = "Invalid service name", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "An admin token is configured and was not given", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn listing(
    State(state): State<AppState>,
    Path(service): Path<String>,
    meta: Meta,
) -> Result<impl IntoResponse, ApiError> {
    state.tokens.load().check(&meta, Access::Admin)?;
    validate::service_name(&service)?;
    let rows = state
        .hub
        .listing_cards(&service, &|instance| render_card(&service, instance));
    let mut out = Vec::with_capacity(64 + rows.iter().map(|r| r.card.len() + 128).sum::<usize>());
    out.extend_from_slice(b"{\"service\":");
    serde_json::to_writer(&mut out, &service).expect("a string serializes");
    out.extend_from_slice(b",\"instances\":[");
    let mut ints = itoa::Buffer::new();
    let mut floats = ryu::Buffer::new();
    for (n, row) in rows.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(row.card.as_bytes());
        out.extend_from_slice(match row.state {
            InstanceState::Up => b"\"state\":\"up\"",
            InstanceState::Draining => b"\"state\":\"draining\"",
            InstanceState::Expired => b"\"state\":\"expired\"",
        });
        out.extend_from_slice(if row.draining {
            b",\"draining\":true,\"connections\":"
        } else {
            b",\"draining\":false,\"connections\":"
        });
        out.extend_from_slice(ints.format(row.connections).as_bytes());
        out.extend_from_slice(b",\"pending\":");
        out.extend_from_slice(ints.format(row.pending).as_bytes());
        out.extend_from_slice(b",\"load\":");
        out.extend_from_slice(floats.format(row.load).as_bytes());
        out.extend_from_slice(b",\"last_heartbeat_ms_ago\":");
        out.extend_from_slice(ints.format(row.last_heartbeat_ms_ago).as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], out))
}

/// The fixed fields of an instance as the start of a JSON object, ending with a
/// comma: everything of [`InstanceDto`] but the fields that move.
fn render_card(service: &str, i: &crate::registry::Instance) -> Card {
    #[derive(Serialize)]
    struct Fixed<'a> {
        id: &'a str,
        service: &'a str,
        address: &'a str,
        weight: u32,
        max_connections: Option<u64>,
        zone: &'a Option<String>,
        tags: &'a [String],
        metadata: &'a BTreeMap<String, String>,
        ttl_secs: u32,
        origin: Origin,
        registered_at: String,
    }
    let fixed = Fixed {
        id: &i.id,
        service,
        address: &i.spec.address,
        weight: i.spec.weight,
        max_connections: i.spec.max_connections,
        zone: &i.spec.zone,
        tags: &i.spec.tags,
        metadata: &i.spec.metadata,
        ttl_secs: i.spec.ttl_secs,
        origin: i.origin,
        registered_at: rfc3339(i.registered_at_unix_ms),
    };
    let mut text = serde_json::to_string(&fixed).expect("plain fields serialize");
    // `{...}` becomes `{...,` so the moving fields can follow.
    text.pop();
    text.push(',');
    Card::from(text)
}
