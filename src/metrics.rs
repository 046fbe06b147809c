//! Every metric's name (as a constant, so names live in one place), the process's
//! Prometheus recorder and its upkeep, and the per-service counter handles of the hot
//! paths. A leaf: imports nothing of the crate; the gauges read off the registry at
//! scrape time are set by `api/scrape.rs`.
//!
//! Label values stay bounded: services, states, routes, listeners and directions;
//! never an instance id or a client address. Must not touch HTTP types or the store.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What a metric family is, for its `# TYPE` and for `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down.
    Gauge,
    /// Only goes up; its name ends in `_total`.
    Counter,
    /// Observations in buckets.
    Histogram,
}

/// One metric family: its name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Full name, `switchboard_…`.
    pub name: &'static str,
    /// Gauge, counter or histogram.
    pub kind: Kind,
    /// What it counts and in which unit (the constant's doc comment).
    pub help: &'static str,
}

/// Declares each family once: a `pub const` name whose doc comment is also the
/// family's `# HELP` text, and [`FAMILIES`], the list `describe` registers.
macro_rules! families {
    ($( $(#[doc = $doc:literal])+ $kind:ident $name:ident = $value:literal; )+) => {
        $(
            $(#[doc = $doc])+
            pub const $name: &str = $value;
        )+
        /// Every family this crate records, with its help text.
        pub const FAMILIES: &[Family] = &[
            $( Family { name: $name, kind: families!(@kind $kind), help: concat!($($doc),+) }, )+
        ];
    };
    (@kind gauge) => { Kind::Gauge };
    (@kind counter) => { Kind::Counter };
    (@kind histogram) => { Kind::Histogram };
}

families! {
    /// Instances by `service` and `state` (`up`, `draining`, `expired`).
    gauge INSTANCES = "switchboard_instances";
    /// Reported connections of live instances, by `service`.
    gauge CONNECTIONS = "switchboard_connections";
    /// Pending hand-outs of live instances, by `service`.
    gauge PENDING = "switchboard_pending_handouts";
    /// 1 while a `service` is in self-preservation.
    gauge SELF_PRESERVATION = "switchboard_self_preservation";
    /// Registrations by `service` and `outcome` (`created`, `replaced`).
    counter REGISTRATIONS = "switchboard_registrations_total";
    /// Heartbeats answered, by `service`.
    counter HEARTBEATS = "switchboard_heartbeats_total";
    /// Instances that expired (no heartbeat within their TTL), by `service`.
    counter EXPIRIES = "switchboard_expiries_total";
    /// Instances removed, by `service` and `reason` (`expired`, `deregistered`).
    counter REMOVALS = "switchboard_removals_total";
    /// `/servers` answers, by `service`.
    counter SERVERS_ANSWERS = "switchboard_servers_answers_total";
    /// Heartbeat answers with `shed` > 0, by `service`.
    counter SHED_HINTS = "switchboard_shed_hints_total";
    /// Connections asked to close by those hints, by `service`.
    counter SHED_CONNECTIONS = "switchboard_shed_connections_total";
    /// HTTP request duration in seconds, by `route`, `method`, `status`.
    histogram HTTP_DURATION = "switchboard_http_request_duration_seconds";
    /// Store write duration in seconds, by `op` and `outcome`.
    histogram STORE_WRITE_DURATION = "switchboard_store_write_duration_seconds";
    /// Heartbeat batch size (instances per persisted batch).
    histogram HEARTBEAT_BATCH_SIZE = "switchboard_heartbeat_batch_size";
    /// Store batch size (registrations, drains and deletions per group commit).
    histogram STORE_BATCH_SIZE = "switchboard_store_batch_size";
    /// Seconds since this cluster node's last successful sync.
    gauge CLUSTER_SYNC_LAG = "switchboard_cluster_sync_lag_seconds";
    /// Relayed connections open now, by forward `listener`.
    gauge FORWARD_ACTIVE = "switchboard_forward_connections_active";
    /// Connections accepted, by forward `listener`.
    counter FORWARD_TOTAL = "switchboard_forward_connections_total";
    /// Connect attempts to a backend that failed, by forward `listener`.
    counter FORWARD_CONNECT_FAILURES = "switchboard_forward_connect_failures_total";
    /// Connects retried on the next candidate, by forward `listener`.
    counter FORWARD_RETRIES = "switchboard_forward_retries_total";
    /// Device connections closed at once instead of relayed (and UDP clients'
    /// first datagrams dropped), by forward `listener` and `reason`: `max_connections`
    /// (the listener's cap), `fd_budget` (the forwarder holds its whole fd budget, so
    /// the reserve for the API, the store and health checks stays untouched),
    /// `fd_shortage` (EMFILE or ENFILE opening the backend socket; never counted as the
    /// backend's failure).
    counter FORWARD_REFUSED = "switchboard_forward_refused_total";
    /// File descriptors the forwarder may hold (the open-file limit less the
    /// reserve), across every forward listener.
    gauge FORWARD_FD_BUDGET = "switchboard_forward_fd_budget";
    /// File descriptors relayed connections (two each) and UDP sessions (one each)
    /// hold now, across every forward listener.
    gauge FORWARD_FDS = "switchboard_forward_fds";
    /// UDP sessions ended to make room in a full session table (a flood of
    /// source addresses), by forward `listener`.
    counter FORWARD_UDP_EVICTED = "switchboard_forward_udp_sessions_evicted_total";
    /// Bytes relayed, by forward `listener` and `direction` (`up`: device to
    /// backend, `down`: backend to device).
    counter FORWARD_BYTES = "switchboard_forward_bytes_total";
    /// DNS queries answered, by `transport` (`udp`, `tcp`) and `rcode`.
    counter DNS_QUERIES = "switchboard_dns_queries_total";
    /// DNS queries over UDP that got no answer, by `reason`: `receive_buffer`
    /// (the kernel dropped them, the socket's receive queue full: its `drops` in
    /// `/proc/net/udp`, read every second), `send_failed` (the answer could not be sent, or
    /// the send buffer stayed full past its wait), `unanswerable` (a response, or fewer
    /// bytes than a header: nothing to answer to), `rate_limited` (over the source's
    /// `queries_per_sec` and not a query a truncated answer can be made for).
    counter DNS_DROPPED = "switchboard_dns_dropped_total";
    /// When the served certificate expires, as Unix seconds, by `listener`
    /// (`http` for the API).
    gauge TLS_CERT_EXPIRY = "switchboard_tls_certificate_expiry_timestamp_seconds";
    /// TLS handshakes, by `listener` (`http`, or a forward listener's address) and
    /// `result` (`ok`; `failed`: the peer's hello or certificate was refused, or it
    /// closed; `timeout`: not done within the header timeout, or a forward listener's
    /// `tls_handshake_timeout_ms`).
    counter TLS_HANDSHAKES = "switchboard_tls_handshakes_total";
    /// ClientHellos read by an SNI-routing forward listener, by `listener` and
    /// `result`: `routed` (a route named the server), `default` (no route did: the
    /// listener's `service`), `refused` (no route and no `service`), `malformed` (not a
    /// TLS ClientHello, or larger than the bound), `timeout`.
    counter FORWARD_SNI = "switchboard_forward_sni_total";
    /// MQTT CONNECT packets read by a `hash = "mqtt_client_id"` listener, by
    /// `listener` and `result`: `keyed` (its client id picked the backend), `empty` (no
    /// client id: the ranking picked), `malformed` (not an MQTT 3.1, 3.1.1 or 5 CONNECT, or
    /// larger than the bound), `timeout`.
    counter FORWARD_MQTT = "switchboard_forward_mqtt_affinity_total";
}

/// One service's counters of the hot paths (heartbeats and `/servers` answers),
/// registered once when the service appears, so a request increments a handle
/// instead of building labels and looking the series up.
#[derive(Debug, Clone)]
pub struct ServiceCounters {
    /// [`HEARTBEATS`].
    pub heartbeats: metrics::Counter,
    /// [`SHED_HINTS`].
    pub shed_hints: metrics::Counter,
    /// [`SHED_CONNECTIONS`].
    pub shed_connections: metrics::Counter,
    /// [`SERVERS_ANSWERS`].
    pub servers_answers: metrics::Counter,
}

impl ServiceCounters {
    /// The handles of `service` (in the process's recorder).
    pub fn new(service: &str) -> Self {
        let counter = |name: &'static str| metrics::counter!(name, "service" => service.to_owned());
        ServiceCounters {
            heartbeats: counter(HEARTBEATS),
            shed_hints: counter(SHED_HINTS),
            shed_connections: counter(SHED_CONNECTIONS),
            servers_answers: counter(SERVERS_ANSWERS),
        }
    }
}

/// A gauge series not set for this long leaves the output.
const FORGET_GAUGES_AFTER: Duration = Duration::from_secs(600);

/// Buckets for latencies, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Buckets for batch sizes.
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
/// Buckets for writes per group commit (at most 256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's Prometheus handle. The recorder is global to the process, so every
/// server started in it (tests start several) reports into the same registry.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            // A service's gauges are zeroed when it goes and forgotten after this,
            // so churning service names cannot grow the registry without bound.
            .idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(FORGET_GAUGES_AFTER),
            )
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(HEARTBEAT_BATCH_SIZE.into()),
                    SIZE_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(STORE_BATCH_SIZE.into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed (an embedder's): then
        // `/metrics` renders ours, which nothing feeds.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// Gives every family its `# HELP` line (Prometheus' linter, `promtool check
/// metrics`, rejects a family without one).
fn describe() {
    for family in FAMILIES {
        // Doc lines start with a space each; the help text is one line.
        let help = family.help.trim().to_owned();
        match family.kind {
            Kind::Gauge => metrics::describe_gauge!(family.name, help),
            Kind::Counter => metrics::describe_counter!(family.name, help),
            Kind::Histogram => metrics::describe_histogram!(family.name, help),
        }
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until
/// cancelled: the exporter keeps raw samples until then, so without it an
/// unscraped server's memory would grow with every request.
pub async fn upkeep_loop(cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => handle().run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_once_and_follows_prometheus_naming() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family declared twice");
        for family in FAMILIES {
            assert!(family.name.starts_with("switchboard_"), "{}", family.name);
            assert!(
                family
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                family.name
            );
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                family.name
            );
            assert!(family.help.trim().len() > 10, "{}: no help", family.name);
        }
    }
}
