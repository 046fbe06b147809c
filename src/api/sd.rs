//! `GET /v1/sd/prometheus` (SPEC section 10): the live instances as Prometheus
//! `http_sd_configs` target groups, one per instance, labelled as `consul_sd` labels
//! its targets. Owns the mapping from an instance to its group; reads the hub only.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Access, Meta};
use super::error::ApiError;
use super::limits::Limit;
use crate::registry::table::InstanceView;
use crate::registry::{State as InstanceState, validate};

/// The metadata key whose value, a port, replaces the instance's own port in its target,
/// so Prometheus scrapes the backend's metrics listener rather than its device port.
pub const METRICS_PORT_KEY: &str = "metrics_port";

/// Label names: Prometheus drops `__meta_*` labels after relabelling, so they are
/// there to be picked from, as Consul's are.
const PREFIX: &str = "__meta_switchboard_";

/// Query string.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SdParams {
    /// Only this service's instances (every service when absent).
    service: Option<String>,
}

/// One target group of Prometheus' HTTP service discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TargetGroup {
    /// `host:port` to scrape.
    pub targets: Vec<String>,
    /// `__meta_switchboard_*` labels.
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/sd/prometheus`.
#[utoipa::path(
    get,
    path = "/v1/sd/prometheus",
    tag = "servers",
    params(SdParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "One target group per live instance (Prometheus `http_sd_configs`)", body = Vec<TargetGroup>),
        (status = 400, description = "A bad service name", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "A read token is configured and was not given", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Over `[limits] read_per_sec` for this address; see Retry-After", body = crate::api::openapi::ErrorBody)
    )
)]
pub async fn prometheus(
    State(state): State<AppState>,
    meta: Meta,
    Query(params): Query<SdParams>,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    state.tokens.load().check(&meta, Access::Read)?;
    state.limits.load().check(Limit::Read, meta.peer)?;
    if let Some(service) = &params.service {
        validate::service_name(service)?;
    }
    let groups = state
        .hub
        .live_views(params.service.as_deref())
        .iter()
        .flat_map(|(service, views)| views.iter().map(move |v| group(service, v)))
        .collect();
    Ok(Json(groups))
}

/// The target group of one instance of `service`.
pub fn group(service: &str, view: &InstanceView) -> TargetGroup {
    let instance = &view.instance;
    let spec = &instance.spec;
    let mut labels = BTreeMap::new();
    let mut label = |name: &str, value: String| {
        labels.insert(format!("{PREFIX}{name}"), value);
    };
    label("service", service.to_owned());
    label("id", instance.id.clone());
    label("zone", spec.zone.clone().unwrap_or_default());
    label(
        "state",
        match view.state {
            InstanceState::Up => "up",
            InstanceState::Draining => "draining",
            InstanceState::Expired => "expired",
        }
        .to_owned(),
    );
    // Leading and trailing commas, as consul_sd: `,a,b,` matches `.*,a,.*` exactly.
    label("tags", format!(",{},", spec.tags.join(",")));
    for (key, value) in &spec.metadata {
        label(&format!("metadata_{}", label_name(key)), value.clone());
    }
    TargetGroup {
        targets: vec![target(&spec.address, spec.metadata.get(METRICS_PORT_KEY))],
        labels,
    }
}

/// `address` (`host:port`, IPv6 in brackets) with its port replaced by `metrics_port`
/// when that is a port number; otherwise the address as registered.
fn target(address: &str, metrics_port: Option<&String>) -> String {
    let port = metrics_port.and_then(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0));
    match (port, address.rsplit_once(':')) {
        (Some(port), Some((host, _))) => format!("{host}:{port}"),
        _ => address.to_owned(),
    }
}

/// A metadata key as a label name: Prometheus label names are `[a-zA-Z0-9_]`, so
/// every other character becomes `_`, as `consul_sd` does for its metadata.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_port_replaces_the_port_and_a_bad_one_is_ignored() {
        let port = |p: &str| Some(p.to_owned());
        assert_eq!(
            target("10.0.0.5:6666", port("9100").as_ref()),
            "10.0.0.5:9100"
        );
        assert_eq!(target("[::1]:6666", port("9100").as_ref()), "[::1]:9100");
        assert_eq!(
            target("host.example:1", port(" 80 ").as_ref()),
            "host.example:80"
        );
        for bad in ["", "0", "65536", "http", "-1"] {
            assert_eq!(target("10.0.0.5:6666", port(bad).as_ref()), "10.0.0.5:6666");
        }
        assert_eq!(target("10.0.0.5:6666", None), "10.0.0.5:6666");
    }

    #[test]
    fn metadata_keys_become_label_names() {
        assert_eq!(label_name("metrics_port"), "metrics_port");
        assert_eq!(label_name("rack-id.v2"), "rack_id_v2");
        assert_eq!(label_name("zoné"), "zon_");
    }
}
