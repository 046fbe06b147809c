//! `GET /openapi.json`: the OpenAPI 3 document of the API, generated with utoipa from
//! the handlers' own annotations and wire types while the router is built (so a route
//! cannot be served without being documented), rendered once.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// The error's stable code and a human message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_address`, `unauthorized`.
    code: String,
    /// Human text.
    message: String,
}

/// A zone or tag: 1..=64 letters, digits or `. _ - : /`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._:/-]{1,64}$")]
pub struct Label(String);

/// The document's fixed parts; paths come from the router (`api::router`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Registry of long-lived TCP backends: registration, heartbeats with live connection counts, ranked server lists, drain, and operations.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "instances", description = "Backends: register, heartbeat, drain, deregister"),
        (name = "servers", description = "Devices: the ranked list"),
        (name = "admin", description = "Operators: services, instances, forwarders"),
        (name = "ops", description = "Health, readiness, metrics, this document, the dashboard")
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the admin, register and read tokens use.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Keeps the rendered document for [`openapi`] (the first router built wins; every
/// router of the process documents the same API).
pub fn publish(document: &utoipa::openapi::OpenApi) {
    let _ = DOCUMENT.get_or_init(|| document.to_pretty_json().expect("the document serializes"));
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get().cloned().unwrap_or_else(|| "{}".to_owned()),
    )
}
