//! `GET /`: the dashboard page for people, served from the binary (no CDN, no build
//! step at run time). The page itself asks the API for its data with the admin token.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, compiled into the binary.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "ops",
    responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
