//! Wiring of `switchboard serve`: open the store, restore the registry, bind the
//! listeners, spawn the background loops, and shut everything down in order.
//!
//! Holds no business rules. [`start`] reports the bound addresses, so tests and
//! embedders can bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::limits::RateLimits;
use crate::api::serve::HttpLimits;
use crate::api::{self, AppState, Shared};
use crate::cli::ServeArgs;
use crate::clock::Clock;
use crate::cluster::{self, ClusterNode};
use crate::config::Config;
use crate::forwarder::stats::ForwardBoard;
use crate::forwarder::supervisor::Supervisor;
use crate::hub::Hub;
use crate::reload::{self, Applied};
use crate::store::{self, StoreError};
use crate::tls::ServerTls;
use crate::{rlimit, systemd, upkeep};

/// The longest the store may take to close at shutdown.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store could not be opened, migrated or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The DNS zone of `[dns]` cannot be built.
    #[error("dns.domain: {0}")]
    Zone(#[from] crate::dns::answer::ZoneError),
    /// A TLS file of `[tls]` cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Where the HTTP API really listens.
    pub http_addr: SocketAddr,
    /// Where each forward listener really listens, in configuration order.
    pub forward_addrs: Vec<SocketAddr>,
    /// Where the DNS server listens (UDP and TCP), when `[dns]` is configured.
    pub dns_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    done: JoinHandle<Result<(), AppError>>,
    reload: Reloader,
}

/// What a reload needs: the running parts and the configuration they run.
#[derive(Debug)]
struct Reloader {
    supervisor: Arc<Supervisor>,
    state: AppState,
    /// The API's TLS, when `[tls]` was configured at start.
    tls: Option<Arc<ServerTls>>,
    /// Reloads apply one at a time, each against the configuration before it.
    config: tokio::sync::Mutex<Config>,
}

impl Running {
    /// Starts the graceful shutdown and waits for it to finish.
    ///
    /// # Errors
    /// [`AppError`] when serving failed.
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after its shutdown token fired).
    ///
    /// # Errors
    /// [`AppError`] when serving failed.
    pub async fn wait(self) -> Result<(), AppError> {
        match self.done.await {
            Ok(result) => result,
            Err(join) => Err(AppError::Serve(std::io::Error::other(join))),
        }
    }

    /// Applies a new, validated configuration without a restart: forward listeners,
    /// static instances, tokens, limits and `[rebalance]` (what [`reload::apply`] can change).
    pub async fn reload(&self, new: Config) -> Applied {
        let mut current = self.reload.config.lock().await;
        let state = &self.reload.state;
        let supervisor = &self.reload.supervisor;
        let api_settings = |c: &Config| state.apply_settings(c);
        let parts = reload::Parts {
            supervisor,
            hub: &state.hub,
            api_tls: self.reload.tls.as_deref(),
            api_settings: &api_settings,
        };
        let applied = reload::apply(&current, &new, &parts).await;
        *current = new;
        applied
    }

    /// Where each forward listener listens now (reloads add and remove them).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.reload.supervisor.listen_addrs()
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Opens the store, restores the registry, binds and serves until the returned
/// [`Running`] is stopped.
///
/// # Errors
/// [`AppError`] when the store cannot be opened or a listener cannot be bound.
pub async fn start(config: Config) -> Result<Running, AppError> {
    // Before anything takes a metric handle: a handle taken earlier records nowhere.
    crate::metrics::handle();
    // Before the store: a certificate that cannot be served stops the start at once.
    let api_tls = match &config.tls {
        Some(tls) => Some(Arc::new(ServerTls::load(
            tls,
            "http",
            crate::tls::api_alpn(),
        )?)),
        None => None,
    };
    let opened = store::open(&config.db).await?;
    // Nodes of a cluster break equal-load ties each their own way, so that they do
    // not all hand out the same instance at once.
    let tiebreak_seed = if opened.cluster.is_some() {
        rand::random()
    } else {
        0
    };
    let hub = Hub::new(
        opened.store,
        Clock::start(),
        config.rebalance,
        tiebreak_seed,
    );
    let node = opened
        .cluster
        .map(|shared| ClusterNode::new(hub.clone(), shared));
    let restored = match &node {
        Some(node) => node.restore().await?,
        None => hub.restore().await?,
    };
    tracing::info!(db = %crate::config::redact_url(&config.db), restored, "store open");

    let listener = TcpListener::bind(config.http)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.http,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.http,
        source,
    })?;
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %http_addr, scheme, "http listening on {http_addr} ({scheme})");
    if let Some(warning) = api::ops::cleartext_warning(&config) {
        tracing::warn!("{warning}");
    }
    let shutdown = CancellationToken::new();
    let shutting_down = Arc::new(AtomicBool::new(false));
    let forwarders = Arc::new(ForwardBoard::default());
    // The limit as it is now (`run` raised it first); what the fd budget shares out.
    let fd_limit = rlimit::soft_limit().unwrap_or_else(|err| {
        tracing::warn!(%err, "could not read the open file limit; the forwarder gets no fd budget");
        u64::MAX
    });
    let history = Arc::new(crate::history::History::new(
        config.dashboard.history_sample,
        config.dashboard.history_samples,
    ));
    let state: AppState = Arc::new(Shared {
        hub: hub.clone(),
        cluster: node.clone(),
        forwarders: Arc::clone(&forwarders),
        tokens: arc_swap::ArcSwap::from_pointee(api::auth::Tokens::new(
            &config.tokens,
            config.register_needs_client_cert(),
        )),
        limits: arc_swap::ArcSwap::from_pointee(RateLimits::new(
            config.limits.register_per_sec,
            config.limits.read_per_sec,
        )),
        shutting_down: Arc::clone(&shutting_down),
        shutdown: shutdown.clone(),
        scraped: api::scrape::ScrapedServices::default(),
        cleartext_warning: arc_swap::ArcSwapOption::from(
            api::ops::cleartext_warning(&config).map(Arc::new),
        ),
        history: Arc::clone(&history),
    });
    let router = api::router(Arc::clone(&state));

    let loops = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(upkeep::sweep_loop(
        hub.clone(),
        loops.child_token(),
        crate::systemd::Watchdog::from_env(),
    ));
    tracker.spawn(crate::metrics::upkeep_loop(loops.child_token()));
    tracker.spawn(forget_idle_limits(Arc::clone(&state), loops.child_token()));
    tracker.spawn(crate::history::sampler::run(
        hub.clone(),
        history,
        loops.child_token(),
    ));
    match node {
        None => {
            tracker.spawn(upkeep::flush_loop(hub.clone(), loops.child_token()));
        }
        Some(node) => {
            tracing::info!(node = %node.name(), "cluster mode: sharing the store with other nodes");
            tracker.spawn(cluster::flush_loop(node.clone(), loops.child_token()));
            tracker.spawn(cluster::sync_loop(node.clone(), loops.child_token()));
            tracker.spawn(cluster::node_loop(node, loops.child_token()));
        }
    }

    let stop_accepting = CancellationToken::new();
    let stop_relays = CancellationToken::new();
    let relays = TaskTracker::new();
    let supervisor = Arc::new(Supervisor::new(
        hub.clone(),
        Arc::clone(&forwarders),
        relays.clone(),
        stop_accepting.clone(),
        stop_relays.clone(),
        tracker.clone(),
        loops.child_token(),
        fd_limit,
    ));
    supervisor.set_budget(&config, reload::dns_tcp_connections(&config));
    let mut applied = Applied::default();
    supervisor.apply_statics(&config.statics, &config.forwards, &mut applied);
    supervisor
        .apply_forwards(&config.forwards, &mut applied)
        .await
        .map_err(|(addr, source)| AppError::Bind { addr, source })?;
    let forward_addrs = supervisor.listen_addrs();
    let dns_addr = match &config.dns {
        None => None,
        Some(dns) => {
            let bound = crate::dns::bind(dns)
                .await
                .map_err(|source| AppError::Bind {
                    addr: dns.listen,
                    source,
                })?;
            let local = bound.local;
            let zone = crate::dns::answer::Zone::new(
                &dns.domain,
                dns.ttl_secs,
                dns.answers,
                &dns.name_servers,
            )?;
            // Stops with the forward listeners: a node shutting down answers no more.
            crate::dns::serve(
                bound,
                zone,
                hub.clone(),
                dns.queries_per_sec.and_then(std::num::NonZeroU32::new),
                stop_accepting.child_token(),
                &tracker,
            )
            .map_err(|source| AppError::Bind {
                addr: dns.listen,
                source,
            })?;
            Some(local)
        }
    };

    let drain_timeout = config.drain_timeout;
    let limits = HttpLimits {
        header_timeout: config.http_header_timeout,
        idle_timeout: config.http_idle_timeout,
        max_connections: config.http_max_connections,
        fast_path: config.http_fast_path,
    };
    let stop = shutdown.clone();
    let server = tokio::spawn(api::serve::serve(
        listener,
        router,
        limits,
        api_tls.clone(),
        stop.clone(),
    ));
    let done = tokio::spawn(async move {
        stop.cancelled().await;
        shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let deadline = tokio::time::Instant::now() + drain_timeout;
        stop_accepting.cancel();
        relays.close();
        let served = finish_within(server, drain_timeout).await;
        if tokio::time::timeout_at(deadline, relays.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = relays.len(),
                "drain timeout passed; closing relayed connections"
            );
            stop_relays.cancel();
            relays.wait().await;
        }
        loops.cancel();
        tracker.close();
        tracker.wait().await;
        match hub.flush_beats().await {
            Ok(n) => tracing::info!(heartbeats = n, "final heartbeat batch persisted"),
            Err(err) => tracing::warn!(%err, "final heartbeat batch not persisted"),
        }
        if tokio::time::timeout(STORE_CLOSE_TIMEOUT, hub.close())
            .await
            .is_err()
        {
            tracing::warn!(
                ?STORE_CLOSE_TIMEOUT,
                "store did not close in time; exiting anyway"
            );
        }
        tracing::info!("stopped");
        served
    });
    Ok(Running {
        http_addr,
        forward_addrs,
        dns_addr,
        shutdown,
        done,
        reload: Reloader {
            supervisor,
            state,
            tls: api_tls,
            config: tokio::sync::Mutex::new(config),
        },
    })
}

/// Every minute, drops the rate-limit state of addresses that are idle again.
async fn forget_idle_limits(state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => state.limits.load().forget_idle(),
        }
    }
}

async fn finish_within(server: JoinHandle<()>, limit: Duration) -> Result<(), AppError> {
    let abort = server.abort_handle();
    match tokio::time::timeout(limit, server).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(join)) => Err(AppError::Serve(std::io::Error::other(join))),
        Err(_) => {
            tracing::warn!(
                ?limit,
                "drain timeout passed; closing the remaining connections"
            );
            abort.abort();
            Ok(())
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// [`AppError`] from start-up or serving.
pub async fn run(config: Config, args: ServeArgs) -> Result<(), AppError> {
    // Installed before anything listens: a SIGTERM that arrives as soon as the
    // listeners answer must start the graceful shutdown, not kill the process.
    let mut signals = Signals::install();
    let caps: Vec<Option<u64>> = config.forwards.iter().map(|f| f.max_connections).collect();
    rlimit::raise_and_report(rlimit::needed(&caps, config.http_max_connections as u64));
    let running = start(config).await?;
    // `start` returned: the store is open and every listener is bound.
    let status = format!("serving on {}", running.http_addr);
    systemd::ready(&status);
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                systemd::reloading();
                // Validated whole before anything is applied: a broken file changes
                // nothing.
                match Config::load(&args) {
                    Ok(new) => {
                        let applied = running.reload(new).await;
                        tracing::info!(?applied, "configuration reloaded");
                    }
                    Err(err) => {
                        tracing::error!(%err, "reload refused: the file is not valid; the running configuration stays");
                    }
                }
                systemd::ready(&status);
            }
        }
    }
    systemd::stopping();
    running.stop().await
}

/// What a signal asks for.
enum Signal {
    /// SIGTERM or Ctrl-C: shut down gracefully.
    Stop,
    /// SIGHUP: re-read the config file.
    Reload,
}

/// SIGTERM, Ctrl-C (SIGINT) and SIGHUP, their handlers installed at creation.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn on(sig: &mut Option<tokio::signal::unix::Signal>) {
                match sig {
                    Some(sig) => {
                        sig.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = on(&mut self.int) => { tracing::info!("Ctrl-C received"); Signal::Stop }
                () = on(&mut self.term) => { tracing::info!("SIGTERM received"); Signal::Stop }
                () = on(&mut self.hup) => { tracing::info!("SIGHUP received: reloading the configuration"); Signal::Reload }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
            Signal::Stop
        }
    }
}
