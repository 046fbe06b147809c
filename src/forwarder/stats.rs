//! Live figures of each forward listener: kept as atomics for `GET /v1/forwarders`
//! (the dashboard) and mirrored into the Prometheus metrics, labelled by listener;
//! and, on the board, the fd budget every listener takes its descriptors from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, Gauge};

use super::budget::FdBudget;
use crate::metrics as names;
use crate::tls::HandshakeFailed;

/// Why a device connection (or a UDP client's first datagram) was turned away: the
/// `reason` label of [`names::FORWARD_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections` was reached.
    MaxConnections,
    /// The forwarder holds its whole fd budget (the reserve is not touched).
    FdBudget,
    /// EMFILE or ENFILE when opening the backend socket: our shortage, not the
    /// backend's failure.
    FdShortage,
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::index`].
    pub const ALL: [Refusal; 3] = [
        Refusal::MaxConnections,
        Refusal::FdBudget,
        Refusal::FdShortage,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::FdBudget => "fd_budget",
            Refusal::FdShortage => "fd_shortage",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::MaxConnections => 0,
            Refusal::FdBudget => 1,
            Refusal::FdShortage => 2,
        }
    }
}

/// What an SNI-routing listener did with a ClientHello: the `result` label of
/// [`names::FORWARD_SNI`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniResult {
    /// A route named the server.
    Routed,
    /// No route did: the listener's `service`.
    Default,
    /// No route did and the listener has no `service`: closed.
    Refused,
    /// Not a ClientHello, or one past the bound: closed.
    Malformed,
    /// Not complete in time: closed.
    Timeout,
}

impl SniResult {
    const LABELS: [&'static str; 5] = ["routed", "default", "refused", "malformed", "timeout"];
}

/// What an MQTT-hashing listener did with a CONNECT: the `result` label of
/// [`names::FORWARD_MQTT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttResult {
    /// Its client id picked the backend.
    Keyed,
    /// It had no client id: the ranking picked.
    Empty,
    /// Not an MQTT CONNECT, or one past the bound: closed.
    Malformed,
    /// Not complete in time: closed.
    Timeout,
}

impl MqttResult {
    const LABELS: [&'static str; 4] = ["keyed", "empty", "malformed", "timeout"];
}

/// Counts by result, kept for the dashboard and mirrored into a metric.
#[derive(Debug)]
struct Results<const N: usize> {
    counts: [AtomicU64; N],
    metric: [Counter; N],
}

impl<const N: usize> Results<N> {
    fn new(name: &'static str, label: &str, results: [&'static str; N]) -> Self {
        Results {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            metric: results.map(|result| {
                metrics::counter!(name, "listener" => label.to_owned(), "result" => result)
            }),
        }
    }

    fn hit(&self, index: usize) {
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.metric[index].increment(1);
    }

    fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// One listener's figures.
#[derive(Debug)]
pub struct ListenerStats {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The service it forwards to.
    pub service: String,
    active: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
    m_active: Gauge,
    m_total: Counter,
    /// By [`Refusal::index`].
    m_refused: [Counter; 3],
    m_failures: Counter,
    m_retries: Counter,
    m_up: Counter,
    m_down: Counter,
    sni: Results<5>,
    mqtt: Results<4>,
    /// TLS handshakes: ok, failed, timeout (the metric is `ServerTls`'s).
    tls: [AtomicU64; 3],
}

/// An SNI or MQTT listener's counts by result, in the order of their labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeSnapshot {
    /// TLS handshakes: ok, failed, timeout.
    pub tls: [u64; 3],
    /// ClientHellos by [`SniResult`]: routed, default, refused, malformed, timeout.
    pub sni: [u64; 5],
    /// CONNECTs by [`MqttResult`]: keyed, empty, malformed, timeout.
    pub mqtt: [u64; 4],
}

impl EdgeSnapshot {
    /// `(label, count)` of each TLS handshake result.
    pub fn tls_results(&self) -> impl Iterator<Item = (&'static str, u64)> {
        ["ok", "failed", "timeout"].into_iter().zip(self.tls)
    }

    /// `(label, count)` of each SNI result.
    pub fn sni_results(&self) -> impl Iterator<Item = (&'static str, u64)> {
        SniResult::LABELS.into_iter().zip(self.sni)
    }

    /// `(label, count)` of each MQTT result.
    pub fn mqtt_results(&self) -> impl Iterator<Item = (&'static str, u64)> {
        MqttResult::LABELS.into_iter().zip(self.mqtt)
    }
}

/// A snapshot of one listener, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSnapshot {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The service it forwards to.
    pub service: String,
    /// Relayed connections open now.
    pub active: u64,
    /// Connections accepted since start.
    pub total: u64,
    /// Connections refused, for any [`Refusal`].
    pub refused: u64,
    /// ClientHellos and CONNECTs by result.
    pub edge: EdgeSnapshot,
}

impl ListenerStats {
    /// Figures for a listener on `listen` forwarding to `service`.
    pub fn new(listen: SocketAddr, service: &str) -> Self {
        let label = listen.to_string();
        let counter = |name: &'static str| metrics::counter!(name, "listener" => label.clone());
        ListenerStats {
            listen,
            service: service.to_owned(),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            m_active: metrics::gauge!(names::FORWARD_ACTIVE, "listener" => label.clone()),
            m_total: counter(names::FORWARD_TOTAL),
            m_refused: Refusal::ALL.map(|reason| {
                metrics::counter!(names::FORWARD_REFUSED, "listener" => label.clone(), "reason" => reason.as_str())
            }),
            m_failures: counter(names::FORWARD_CONNECT_FAILURES),
            m_retries: counter(names::FORWARD_RETRIES),
            m_up: metrics::counter!(names::FORWARD_BYTES, "listener" => label.clone(), "direction" => "up"),
            m_down: metrics::counter!(names::FORWARD_BYTES, "listener" => label.clone(), "direction" => "down"),
            sni: Results::new(names::FORWARD_SNI, &label, SniResult::LABELS),
            mqtt: Results::new(names::FORWARD_MQTT, &label, MqttResult::LABELS),
            tls: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A connection was accepted and will be relayed: counted as active until the
    /// returned guard drops.
    pub fn opened(self: &Arc<Self>) -> ActiveGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.m_total.increment(1);
        self.m_active.increment(1.0);
        ActiveGuard(Arc::clone(self))
    }

    /// A connection was refused, for `reason`.
    pub fn refused(&self, reason: Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.m_refused[reason.index()].increment(1);
    }

    /// A connect attempt to a backend failed.
    pub fn connect_failed(&self) {
        self.m_failures.increment(1);
    }

    /// A connect went on to the next candidate.
    pub fn retried(&self) {
        self.m_retries.increment(1);
    }

    /// Bytes relayed: `up` from device to backend, `down` back.
    pub fn carried(&self, up: u64, down: u64) {
        self.m_up.increment(up);
        self.m_down.increment(down);
    }

    /// A TLS handshake ended: done (`None`), or how it failed.
    pub fn handshake(&self, failed: Option<&HandshakeFailed>) {
        let index = match failed {
            None => 0,
            Some(HandshakeFailed::Refused(_)) => 1,
            Some(HandshakeFailed::Timeout) => 2,
        };
        self.tls[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A ClientHello was read (or not), with this result.
    pub fn sni(&self, result: SniResult) {
        self.sni.hit(result as usize);
    }

    /// An MQTT CONNECT was read (or not), with this result.
    pub fn mqtt(&self, result: MqttResult) {
        self.mqtt.hit(result as usize);
    }

    /// The figures now.
    pub fn snapshot(&self) -> ListenerSnapshot {
        ListenerSnapshot {
            listen: self.listen,
            service: self.service.clone(),
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            edge: EdgeSnapshot {
                tls: std::array::from_fn(|i| self.tls[i].load(Ordering::Relaxed)),
                sni: self.sni.snapshot(),
                mqtt: self.mqtt.snapshot(),
            },
        }
    }
}

/// Keeps one connection counted as active.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ListenerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.m_active.decrement(1.0);
    }
}

/// Every listener's figures, in start order (listeners come and go on reload), and
/// the fd budget they share.
#[derive(Debug)]
pub struct ForwardBoard {
    listeners: RwLock<Vec<Arc<ListenerStats>>>,
    fds: Arc<FdBudget>,
}

impl Default for ForwardBoard {
    fn default() -> Self {
        ForwardBoard::new(FdBudget::unlimited())
    }
}

impl ForwardBoard {
    /// A board with no listener yet, whose listeners share `fds`.
    pub fn new(fds: FdBudget) -> Self {
        ForwardBoard {
            listeners: RwLock::new(Vec::new()),
            fds: Arc::new(fds),
        }
    }

    /// The fd budget every listener takes its descriptors from.
    pub fn fds(&self) -> &Arc<FdBudget> {
        &self.fds
    }

    /// Adds a listener's figures.
    pub fn add(&self, stats: Arc<ListenerStats>) {
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats);
    }

    /// Removes a listener's figures.
    pub fn remove(&self, listen: SocketAddr) {
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.listen != listen);
    }

    /// Every listener's figures now.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }
}
