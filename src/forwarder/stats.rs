//! Live figures of each forward listener: kept as atomics for `GET /v1/forwarders`
//! (the dashboard) and mirrored into the Prometheus metrics, labelled by listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, Gauge};

use crate::metrics as names;

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
    m_refused: Counter,
    m_failures: Counter,
    m_retries: Counter,
    m_up: Counter,
    m_down: Counter,
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
    /// Connections refused at `max_connections`.
    pub refused: u64,
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
            m_refused: counter(names::FORWARD_REFUSED),
            m_failures: counter(names::FORWARD_CONNECT_FAILURES),
            m_retries: counter(names::FORWARD_RETRIES),
            m_up: metrics::counter!(names::FORWARD_BYTES, "listener" => label.clone(), "direction" => "up"),
            m_down: metrics::counter!(names::FORWARD_BYTES, "listener" => label, "direction" => "down"),
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

    /// A connection was refused at `max_connections`.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.m_refused.increment(1);
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

    /// The figures now.
    pub fn snapshot(&self) -> ListenerSnapshot {
        ListenerSnapshot {
            listen: self.listen,
            service: self.service.clone(),
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
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

/// Every listener's figures, in start order (listeners come and go on reload).
#[derive(Debug, Default)]
pub struct ForwardBoard {
    listeners: RwLock<Vec<Arc<ListenerStats>>>,
}

impl ForwardBoard {
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
