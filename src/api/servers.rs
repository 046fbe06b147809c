//! `GET /servers`: the ranked list for smart clients, in JSON or `text/plain`, with
//! the blocking-query form (`since` + `wait_secs`).

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::answer::Answer;
use super::auth::{Access, Meta};
use super::error::ApiError;
use super::limits::Limit;
use super::{AppState, Shared};
use crate::registry::table::{RankQuery, Ranked};
use crate::registry::validate::{self, Invalid};

/// Default `limit`.
pub const DEFAULT_LIMIT: usize = 5;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 100;
/// Largest version: versions are 53-bit (exact in JSON numbers).
pub const MAX_VERSION: u64 = (1 << 53) - 1;
/// Largest `wait_secs`.
pub const MAX_WAIT_SECS: u64 = 60;

/// Query string, taken as text so each field gets its own error code.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServersParams {
    /// Service name (default `default`).
    #[param(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    service: Option<String>,
    /// How many servers, 1..=100 (default 5).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Affinity key (a device id): the first server is its owner on the ring.
    /// 1..=256 bytes.
    #[param(min_length = 1, max_length = 64)]
    key: Option<String>,
    /// Preferred zone: its live instances come first.
    #[param(pattern = "^[A-Za-z0-9._:/-]{1,64}$")]
    zone: Option<String>,
    /// Only instances whose tags contain this one.
    #[param(pattern = "^[A-Za-z0-9._:/-]{1,64}$")]
    tag: Option<String>,
    /// Blocking query: hold the answer until the version differs from this.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9_007_199_254_740_991_f64)]
    since: Option<String>,
    /// Blocking query: hold it at most this long, 1..=60 seconds.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 60)]
    wait_secs: Option<String>,
}

/// One server in the answer. Written by `write_json`; this type is the schema in
/// `/openapi.json` and the reference the writer is tested against.
#[derive(Debug, Serialize, ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct ServerDto {
    id: String,
    address: String,
    zone: Option<String>,
    weight: u32,
    connections: u64,
    load: f64,
}

/// The JSON answer (see [`ServerDto`] on who writes it).
#[derive(Debug, Serialize, ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct ServersAnswer {
    service: String,
    version: u64,
    reconnect_jitter_ms: u64,
    self_preservation: bool,
    servers: Vec<ServerDto>,
}

fn parse_number(raw: Option<&str>, code: &'static str, name: &str) -> Result<Option<u64>, Invalid> {
    raw.map(|text| {
        text.parse::<u64>().map_err(|_| {
            Invalid::new(
                code,
                format!("{name} must be a non-negative integer, got {text:?}"),
            )
        })
    })
    .transpose()
}

/// `GET /servers`.
#[utoipa::path(
    get,
    path = "/servers",
    tag = "servers",
    params(ServersParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Live instances, best first (JSON, or one `host:port` per line with `Accept: text/plain`)",
            content(
                (ServersAnswer = "application/json"),
                (String = "text/plain")
            )),
        (status = 400, description = "A bad parameter", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "A read token is configured and was not given", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Over `[limits] read_per_sec` for this address; see Retry-After", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn servers(
    State(state): State<AppState>,
    meta: Meta,
    RawQuery(query): RawQuery,
) -> Answer {
    answer(&state, query.as_deref(), &meta).await
}

/// The answer of `GET /servers` for a query string (without the `?`), for both HTTP
/// paths: the read token, the read rate limit, the parameters, then the ranking.
pub async fn answer(state: &Shared, query: Option<&str>, meta: &Meta) -> Answer {
    match ranked(state, query, meta).await {
        Ok(answer) => answer,
        Err(err) => err.answer(),
    }
}

/// Parses a query string as axum's `Query` does (serde_urlencoded through
/// serde_path_to_error), with its rejection's message.
fn parse_query(query: Option<&str>) -> Result<ServersParams, Invalid> {
    let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        Invalid::new(
            "invalid_query",
            format!("malformed query string: Failed to deserialize query string: {e}"),
        )
    })
}

async fn ranked(state: &Shared, query: Option<&str>, meta: &Meta) -> Result<Answer, ApiError> {
    state.tokens.load().check(meta, Access::Read)?;
    state.limits.load().check(Limit::Read, meta.peer)?;
    let params = parse_query(query)?;
    let service = params.service.as_deref().unwrap_or("default");
    validate::service_name(service)?;
    let limit = match parse_number(params.limit.as_deref(), "invalid_limit", "limit")? {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(
                Invalid::new("invalid_limit", format!("limit {n} is outside 1..=100")).into(),
            );
        }
    };
    if let Some(key) = &params.key {
        validate::affinity_key(key)?;
    }
    let zone = validate::zone(params.zone.as_deref())?;
    let tag = validate::tag(params.tag.as_deref())?;
    let since = parse_number(params.since.as_deref(), "invalid_since", "since")?;
    if since.is_some_and(|v| v > MAX_VERSION) {
        return Err(Invalid::new(
            "invalid_since",
            format!("since is above {MAX_VERSION}: versions are 53-bit"),
        )
        .into());
    }
    let wait = match parse_number(params.wait_secs.as_deref(), "invalid_wait", "wait_secs")? {
        None => None,
        Some(n) if (1..=MAX_WAIT_SECS).contains(&n) => Some(Duration::from_secs(n)),
        Some(n) => {
            return Err(
                Invalid::new("invalid_wait", format!("wait_secs {n} is outside 1..=60")).into(),
            );
        }
    };
    if let (Some(since), Some(wait)) = (since, wait) {
        tokio::select! {
            () = state.hub.wait_for_change(service, since, wait) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    let rank_query = RankQuery {
        limit,
        zone: zone.as_deref(),
        key: params.key.as_deref().map(str::as_bytes),
        tag: tag.as_deref(),
    };
    let ranked = state.hub.servers(service, &rank_query);
    if meta.wants_text {
        return Ok(text_answer(&ranked, state.hub.reconnect_jitter_ms()));
    }
    Ok(Answer::json(
        StatusCode::OK,
        super::write_json::servers_body(service, &ranked, state.hub.reconnect_jitter_ms()),
    ))
}

/// The answer as [`ServersAnswer`], which `write_json` is tested against.
#[cfg(test)]
pub(crate) fn reference_dto(service: &str, ranked: &Ranked, jitter: u64) -> ServersAnswer {
    ServersAnswer {
        service: service.to_owned(),
        version: ranked.version,
        reconnect_jitter_ms: jitter,
        self_preservation: ranked.self_preservation,
        servers: ranked
            .servers
            .iter()
            .map(|s| ServerDto {
                id: s.id.clone(),
                address: s.address.clone(),
                zone: s.zone.clone(),
                weight: s.weight,
                connections: s.connections,
                load: s.load,
            })
            .collect(),
    }
}

/// One `host:port` per line, best first.
fn text_answer(ranked: &Ranked, reconnect_jitter_ms: u64) -> Answer {
    let mut body = String::with_capacity(ranked.servers.len() * 24);
    for server in &ranked.servers {
        body.push_str(&server.address);
        body.push('\n');
    }
    Answer {
        status: StatusCode::OK,
        content_type: Some("text/plain; charset=utf-8"),
        extra: vec![
            (
                HeaderName::from_static("x-switchboard-version"),
                HeaderValue::from(ranked.version),
            ),
            (
                HeaderName::from_static("x-reconnect-jitter-ms"),
                HeaderValue::from(reconnect_jitter_ms),
            ),
        ],
        body: body.into(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The same parameters and the same message as axum's `Query` extractor.
        #[test]
        fn queries_parse_as_axum_parses_them(
            query in "([a-z_]{0,9}=?[a-zA-Z0-9%+&=;._-]{0,12}){0,4}",
        ) {
            let uri: axum::http::Uri = format!("/servers?{query}").parse().unwrap();
            let axum = axum::extract::Query::<ServersParams>::try_from_uri(&uri);
            let mine = parse_query(Some(&query));
            match (axum, mine) {
                (Ok(axum::extract::Query(a)), Ok(m)) => prop_assert_eq!(format!("{a:?}"), format!("{m:?}")),
                (Err(a), Err(m)) => prop_assert_eq!(format!("malformed query string: {a}"), m.message.clone()),
                (a, m) => prop_assert!(false, "axum {:?}, mine {:?}", a.map(|q| format!("{:?}", q.0)), m),
            }
        }
    }
}
