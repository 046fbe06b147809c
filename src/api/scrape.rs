//! `/metrics`' scrape: sets the gauges read off the registry and the listeners at
//! that moment (instances by state, connections, pending hand-outs, self-preservation,
//! active relays, the fd budget and what it holds, the cluster sync lag), then renders
//! the process's recorder in Prometheus text format. Names are `crate::metrics`'.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::forwarder::budget::FdBudget;
use crate::forwarder::stats::ListenerSnapshot;
use crate::hub::Hub;
use crate::metrics::{
    CLUSTER_SYNC_LAG, CONNECTIONS, FORWARD_ACTIVE, FORWARD_FD_BUDGET, FORWARD_FDS, INSTANCES,
    PENDING, SELF_PRESERVATION, handle,
};

/// The services one registry's last scrape set gauges for, so the next scrape sets a
/// service that went to 0. One per registry, not per process: several registries in
/// one process (the tests) would otherwise zero each other's services, as they did
/// between a gauge's set and the render.
#[derive(Debug, Default)]
pub struct ScrapedServices(Mutex<BTreeSet<String>>);

/// Sets the gauges that are read off the registry and the listeners (instances,
/// connections, pending, self-preservation, active relays, the fd budget and what
/// it holds, sync lag), then renders everything in Prometheus text format.
pub fn render(
    hub: &Hub,
    scraped: &ScrapedServices,
    forwarders: &[ListenerSnapshot],
    fds: &FdBudget,
    cluster_sync_age: Option<Duration>,
) -> String {
    let handle = handle();
    let summaries = hub.summaries();
    let now: BTreeSet<String> = summaries.iter().map(|s| s.name.clone()).collect();
    {
        let mut seen = scraped.0.lock().unwrap_or_else(|p| p.into_inner());
        // A service that went (its last instance left) reads 0, not its last value.
        for gone in seen.difference(&now) {
            for state in ["up", "draining", "expired"] {
                metrics::gauge!(INSTANCES, "service" => gone.clone(), "state" => state).set(0.0);
            }
            metrics::gauge!(CONNECTIONS, "service" => gone.clone()).set(0.0);
            metrics::gauge!(PENDING, "service" => gone.clone()).set(0.0);
            metrics::gauge!(SELF_PRESERVATION, "service" => gone.clone()).set(0.0);
        }
        *seen = now;
    }
    for s in summaries {
        let service = s.name;
        for (state, n) in [
            ("up", s.up),
            ("draining", s.draining),
            ("expired", s.expired),
        ] {
            metrics::gauge!(INSTANCES, "service" => service.clone(), "state" => state)
                .set(n as f64);
        }
        metrics::gauge!(CONNECTIONS, "service" => service.clone()).set(s.connections as f64);
        metrics::gauge!(PENDING, "service" => service.clone()).set(s.pending as f64);
        metrics::gauge!(SELF_PRESERVATION, "service" => service)
            .set(f64::from(u8::from(s.self_preservation)));
    }
    // Set at each scrape too, so a listener whose count holds still is not forgotten.
    for f in forwarders {
        metrics::gauge!(FORWARD_ACTIVE, "listener" => f.listen.to_string()).set(f.active as f64);
    }
    metrics::gauge!(FORWARD_FD_BUDGET).set(fds.total() as f64);
    metrics::gauge!(FORWARD_FDS).set(fds.held() as f64);
    if let Some(age) = cluster_sync_age {
        metrics::gauge!(CLUSTER_SYNC_LAG).set(age.as_secs_f64());
    }
    handle.run_upkeep();
    handle.render()
}
