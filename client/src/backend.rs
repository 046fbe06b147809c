//! The backend side: register, then heartbeat in the background with a live count
//! the application owns; register again on 404; back off while the registry is
//! unreachable without ever blocking the application; deliver `shed` hints; drain
//! and deregister on shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::registry::{Lease, Registration, Registry};

/// The first retry delay after a failed call.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Shed hints kept for an application that is not reading them; older ones first.
pub const SHED_QUEUE: usize = 16;

/// The live connection count a backend reports: a counter the application keeps,
/// or a function that counts.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::AtomicU64;
/// use switchboard_client::ConnectionCount;
/// let live = Arc::new(AtomicU64::new(0));
/// let count = ConnectionCount::from(Arc::clone(&live));
/// let counted = ConnectionCount::from_fn(|| 42);
/// assert_eq!((count.get(), counted.get()), (0, 42));
/// ```
#[derive(Clone)]
pub struct ConnectionCount(Arc<dyn Fn() -> u64 + Send + Sync>);

impl ConnectionCount {
    /// A count read by calling `count` at each heartbeat.
    pub fn from_fn(count: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        ConnectionCount(Arc::new(count))
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        (self.0)()
    }
}

impl From<Arc<AtomicU64>> for ConnectionCount {
    fn from(counter: Arc<AtomicU64>) -> Self {
        ConnectionCount::from_fn(move || counter.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for ConnectionCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnectionCount").field(&self.get()).finish()
    }
}

/// A registered backend heartbeating in the background. Dropping it stops the
/// heartbeats (the instance then expires); [`Backend::shutdown`] deregisters.
///
/// ```
/// # async fn doc_server() -> Result<(switchboard::app::Running, String), Box<dyn std::error::Error>> {
/// #     let args = switchboard::cli::ServeArgs { no_forward: true, ..Default::default() };
/// #     let toml = "http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"";
/// #     let config = switchboard::config::Config::from_toml(toml, &args)?;
/// #     let server = switchboard::app::start(config).await?;
/// #     let url = format!("http://{}", server.http_addr);
/// #     Ok((server, url))
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (server, url) = doc_server().await?;
/// use std::sync::Arc;
/// use std::sync::atomic::AtomicU64;
/// use std::time::Duration;
/// use switchboard_client::{Backend, Registration, Registry};
///
/// let registry = Registry::builder([url]).build()?;
/// let live = Arc::new(AtomicU64::new(0)); // the server's own connection count
/// let mut backend = Backend::start(
///     registry,
///     "default",
///     Registration::new("127.0.0.1:6666").ttl_secs(3),
///     Arc::clone(&live),
/// );
/// let lease = backend.registered(Duration::from_secs(5)).await?;
/// let mut shed = backend.take_shed().expect("first call");
/// tokio::spawn(async move {
///     while let Some(n) = shed.recv().await {
///         println!("close {n} connections gracefully");
///     }
/// });
/// backend.shutdown().await?; // stop heartbeating, deregister
/// # let _ = lease; server.stop().await?; Ok(()) }
/// ```
pub struct Backend {
    registry: Registry,
    count: ConnectionCount,
    lease: watch::Receiver<Option<Lease>>,
    shed: Option<mpsc::Receiver<u64>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("lease", &*self.lease.borrow())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Starts registering `registration` in `service` and heartbeating `count`, in a
    /// task of the current tokio runtime. Returns at once: registration is retried
    /// with backoff while the registry is unreachable.
    pub fn start(
        registry: Registry,
        service: impl Into<String>,
        registration: Registration,
        count: impl Into<ConnectionCount>,
    ) -> Backend {
        let count = count.into();
        let (lease_tx, lease) = watch::channel(None);
        let (shed_tx, shed) = mpsc::channel(SHED_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(None));
        let worker = Worker {
            registry: registry.clone(),
            service: service.into(),
            registration,
            count: count.clone(),
            lease: lease_tx,
            shed: shed_tx,
            stop: stop_rx,
            last_error: Arc::clone(&last_error),
        };
        Backend {
            registry,
            count,
            lease,
            shed: Some(shed),
            stop,
            task: Some(tokio::spawn(worker.run())),
            last_error,
        }
    }

    /// Waits until the instance is registered, at most `timeout`.
    ///
    /// # Errors
    /// The last registration error (or [`Error::Unreachable`]) when `timeout` passed.
    pub async fn registered(&mut self, timeout: Duration) -> Result<Lease> {
        let waited = tokio::time::timeout(timeout, self.lease.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(lease)) => Ok(lease.clone().expect("waited for Some")),
            _ => {
                let last = self.last_error.lock().ok().and_then(|e| e.clone());
                Err(Error::Unreachable {
                    last: last.unwrap_or_else(|| format!("not registered within {timeout:?}")),
                })
            }
        }
    }

    /// The current lease, once registered (it changes when the backend registers
    /// again after the registry forgot it).
    pub fn lease(&self) -> Option<Lease> {
        self.lease.borrow().clone()
    }

    /// The stream of `shed` hints: each is how many connections to close gracefully
    /// before the next heartbeat. `None` after the first call.
    pub fn take_shed(&mut self) -> Option<mpsc::Receiver<u64>> {
        self.shed.take()
    }

    /// Drains (optionally with a paced evacuation: the heartbeats then carry `shed`
    /// hints of `evacuate_per_sec × heartbeat_secs`), keeps heartbeating until the
    /// count reaches 0 or `deadline` passes, then deregisters.
    ///
    /// # Errors
    /// The drain's or the deregistration's error.
    pub async fn drain_and_shutdown(
        mut self,
        evacuate_per_sec: Option<u32>,
        deadline: Duration,
    ) -> Result<()> {
        if let Some(lease) = self.lease() {
            self.registry.drain(&lease, evacuate_per_sec).await?;
            let until = tokio::time::Instant::now() + deadline;
            // Bounded by the deadline; polls the application's own count.
            while self.count.get() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.stop_heartbeats().await;
        self.deregister().await
    }

    /// Stops heartbeating and deregisters: the instance is gone from every answer.
    ///
    /// # Errors
    /// The deregistration's error ([`Error::UnknownInstance`] is not one: already gone).
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop_heartbeats().await;
        self.deregister().await
    }

    async fn stop_heartbeats(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    async fn deregister(&self) -> Result<()> {
        match self.lease() {
            Some(lease) => match self.registry.deregister(&lease).await {
                Ok(()) | Err(Error::UnknownInstance(_)) => Ok(()),
                Err(err) => Err(err),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The background task of a [`Backend`].
struct Worker {
    registry: Registry,
    service: String,
    registration: Registration,
    count: ConnectionCount,
    lease: watch::Sender<Option<Lease>>,
    shed: mpsc::Sender<u64>,
    stop: watch::Receiver<bool>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let current = self.lease.borrow().clone();
            let wait = match current {
                None => self.register(&mut backoff).await,
                Some(lease) => self.beat(&lease, &mut backoff).await,
            };
            tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Registers; returns how long to wait before the next step.
    async fn register(&mut self, backoff: &mut Backoff) -> Duration {
        match self
            .registry
            .register(&self.service, &self.registration)
            .await
        {
            Ok(lease) => {
                tracing::info!(service = %self.service, id = %lease.id, "registered");
                backoff.reset();
                let every = Duration::from_secs(u64::from(lease.heartbeat_secs.max(1)));
                self.lease.send_replace(Some(lease));
                every
            }
            Err(err) => self.failed(err, backoff),
        }
    }

    /// Heartbeats; returns how long to wait before the next step.
    async fn beat(&mut self, lease: &Lease, backoff: &mut Backoff) -> Duration {
        let every = Duration::from_secs(u64::from(lease.heartbeat_secs.max(1)));
        match self.registry.heartbeat(lease, self.count.get()).await {
            Ok(beat) => {
                backoff.reset();
                if beat.shed > 0 && self.shed.try_send(beat.shed).is_err() {
                    tracing::debug!(
                        shed = beat.shed,
                        "shed hint dropped: the application is not reading them"
                    );
                }
                every
            }
            Err(Error::UnknownInstance(_) | Error::BadLease(_)) => {
                // The registry forgot us (removed, or restarted without its store):
                // register again at once.
                tracing::info!(service = %self.service, id = %lease.id, "registry forgot the instance; registering again");
                self.lease.send_replace(None);
                Duration::ZERO
            }
            Err(err) => self.failed(err, backoff).min(every),
        }
    }

    fn failed(&self, err: Error, backoff: &mut Backoff) -> Duration {
        tracing::warn!(service = %self.service, %err, "registry call failed; retrying");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(err.to_string());
        }
        backoff.next()
    }
}

/// Capped exponential backoff with jitter: each delay is random in the upper half of
/// a window that doubles from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let window = BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let half = window / 2;
        half + Duration::from_millis(rand::random_range(0..=half.as_millis() as u64))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        let second = b.next();
        assert!(
            second >= BACKOFF_MIN && second <= BACKOFF_MIN * 2,
            "{second:?}"
        );
        for _ in 0..40 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        assert!(b.next() >= BACKOFF_MAX / 2, "stays at the cap");
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
