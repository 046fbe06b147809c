//! What a running server can change without a restart (SPEC section 4, `SIGHUP`):
//! forward listeners, static instances, tokens, rate limits and `[rebalance]`.
//! [`Live`] holds what runs and applies a new validated [`Config`] to it: a
//! listener that is gone stops accepting and lets its relayed connections run out,
//! a new one is bound, an unchanged one is left alone; static instances likewise.
//! Registrations are never touched.
//!
//! Owns no parsing (config.rs validates before anything is applied) and no HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::api::auth::Tokens;
use crate::api::limits::RateLimits;
use crate::config::{Config, ForwardConfig, ForwardProtocol, StaticConfig};
use crate::forwarder::listener::Listener;
use crate::forwarder::stats::{ForwardBoard, ListenerStats};
use crate::forwarder::udp::UdpListener;
use crate::forwarder::workers;
use crate::forwarder::{LiveCounts, health};
use crate::hub::Hub;
use crate::registry::InstanceSpec;

/// A forward listener that runs, with the configuration it was started from.
struct RunningListener {
    configured: ForwardConfig,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// A static instance that runs, with its health-check loop's stop.
struct RunningStatic {
    configured: StaticConfig,
    id: String,
    stop: CancellationToken,
}

/// The parts of a running server a reload changes.
pub struct Live {
    hub: Hub,
    counts: Arc<LiveCounts>,
    board: Arc<ForwardBoard>,
    /// Every relayed connection and accept loop runs here (drained at shutdown).
    relays: TaskTracker,
    /// Stops every accept loop (shutdown); each listener has a child of it.
    stop_accepting: CancellationToken,
    /// Ends relayed connections when the drain deadline passes.
    stop_relays: CancellationToken,
    /// Health-check loops run here; stopped with the background loops.
    checks: TaskTracker,
    stop_checks: CancellationToken,
    listeners: Mutex<Vec<RunningListener>>,
    statics: Mutex<Vec<RunningStatic>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// What a reload did, for its log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Listeners started.
    pub listeners_added: usize,
    /// Listeners stopped accepting.
    pub listeners_removed: usize,
    /// Static instances added.
    pub statics_added: usize,
    /// Static instances removed.
    pub statics_removed: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Nothing running yet.
    pub fn new(
        hub: Hub,
        board: Arc<ForwardBoard>,
        relays: TaskTracker,
        stop_accepting: CancellationToken,
        stop_relays: CancellationToken,
        checks: TaskTracker,
        stop_checks: CancellationToken,
    ) -> Self {
        Live {
            hub,
            counts: Arc::new(LiveCounts::default()),
            board,
            relays,
            stop_accepting,
            stop_relays,
            checks,
            stop_checks,
            listeners: Mutex::new(Vec::new()),
            statics: Mutex::new(Vec::new()),
        }
    }

    /// Where each running listener listens, in start order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).iter().map(|l| l.addr).collect()
    }

    /// Starts the listeners of `wanted` that do not run, and stops those that are no
    /// longer wanted (they stop accepting; their connections run out).
    ///
    /// # Errors
    /// The first listener that cannot be bound (those before it run).
    pub async fn apply_forwards(
        &self,
        wanted: &[ForwardConfig],
        applied: &mut Applied,
    ) -> Result<(), (SocketAddr, std::io::Error)> {
        {
            let mut running = lock(&self.listeners);
            running.retain(|l| {
                let keep = wanted.contains(&l.configured);
                if !keep {
                    tracing::info!(listen = %l.addr, service = %l.configured.service, "forward listener removed by reload");
                    l.stop.cancel();
                    self.board.remove(l.addr);
                    applied.listeners_removed += 1;
                }
                keep
            });
        }
        for forward in wanted {
            if lock(&self.listeners)
                .iter()
                .any(|l| &l.configured == forward)
            {
                continue;
            }
            let stop = self.stop_accepting.child_token();
            let addr = match forward.protocol {
                ForwardProtocol::Tcp => self.start_tcp(forward, stop.clone()).await,
                ForwardProtocol::Udp => self.start_udp(forward, stop.clone()).await,
            }
            .map_err(|e| (forward.listen, e))?;
            lock(&self.listeners).push(RunningListener {
                configured: forward.clone(),
                addr,
                stop,
            });
            applied.listeners_added += 1;
        }
        Ok(())
    }

    /// A bound listener's configuration (with the address really bound) and its
    /// figures, on the board from now on.
    fn listener_parts(
        &self,
        forward: &ForwardConfig,
        addr: SocketAddr,
    ) -> (ForwardConfig, Arc<ListenerStats>) {
        let stats = Arc::new(ListenerStats::new(addr, &forward.service));
        self.board.add(Arc::clone(&stats));
        let config = ForwardConfig {
            listen: addr,
            ..forward.clone()
        };
        (config, stats)
    }

    /// Binds and starts a TCP forward listener; answers where it listens.
    async fn start_tcp(
        &self,
        forward: &ForwardConfig,
        stop: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let transport = workers::Transport::Tcp {
            keepalive: forward.tcp_keepalive,
        };
        let bound = workers::bind_listener(forward.listen, transport)?;
        let addr = bound.local;
        tracing::info!(service = %forward.service, "forward listening on {addr}");
        let (config, stats) = self.listener_parts(forward, addr);
        let listener = Arc::new(Listener::new(
            config,
            self.hub.clone(),
            Arc::clone(&self.counts),
            self.stop_relays.clone(),
            stats,
        ));
        workers::run(bound, stop, &self.relays, move |socket, stop, tracker| {
            Arc::clone(&listener).serve(socket, stop, tracker)
        })?;
        Ok(addr)
    }

    /// Binds and starts a UDP forward listener; answers where it listens.
    async fn start_udp(
        &self,
        forward: &ForwardConfig,
        stop: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let bound = workers::bind_listener(forward.listen, workers::Transport::Udp)?;
        let addr = bound.local;
        tracing::info!(service = %forward.service, "forward listening on udp {addr}");
        let (config, stats) = self.listener_parts(forward, addr);
        let listener = Arc::new(UdpListener::new(
            config,
            self.hub.clone(),
            Arc::clone(&self.counts),
            self.stop_relays.clone(),
            stats,
            bound.sockets(),
        ));
        workers::run(bound, stop, &self.relays, move |socket, stop, tracker| {
            Arc::clone(&listener).serve(socket, stop, tracker)
        })?;
        Ok(addr)
    }

    /// Adds the static instances of `wanted` that are not there and removes those
    /// that are no longer wanted.
    pub fn apply_statics(
        &self,
        wanted: &[StaticConfig],
        forwards: &[ForwardConfig],
        applied: &mut Applied,
    ) {
        // A service only UDP listeners forward to has nothing to connect to.
        let passive = |service: &str| {
            let mut serving = forwards.iter().filter(|f| f.service == service);
            serving.clone().next().is_some() && serving.all(|f| f.protocol == ForwardProtocol::Udp)
        };
        let mut running = lock(&self.statics);
        running.retain(|s| {
            let keep = wanted.contains(&s.configured);
            if !keep {
                s.stop.cancel();
                self.hub.remove_static(&s.configured.service, &s.id);
                tracing::info!(service = %s.configured.service, address = %s.configured.address, "static instance removed by reload");
                applied.statics_removed += 1;
            }
            keep
        });
        for s in wanted {
            if running.iter().any(|r| &r.configured == s) {
                continue;
            }
            let id = self.hub.add_static(&s.service, static_spec(s));
            let stop = self.stop_checks.child_token();
            self.checks.spawn(health::check_loop(
                self.hub.clone(),
                s.service.clone(),
                id.clone(),
                s.address.clone(),
                if passive(&s.service) {
                    health::Probe::Passive
                } else {
                    health::Probe::Connect
                },
                Arc::clone(&self.counts),
                stop.clone(),
            ));
            running.push(RunningStatic {
                configured: s.clone(),
                id,
                stop,
            });
            applied.statics_added += 1;
        }
    }

    /// Applies a reloaded configuration: tokens, limits, rebalancing, listeners and
    /// static instances. What cannot change live (the HTTP address, the store, the
    /// HTTP limits) is kept, with a warning when it differs.
    pub async fn apply(&self, old: &Config, new: &Config, state: &AppState) -> Applied {
        let mut applied = Applied::default();
        for (what, changed) in [
            ("http", old.http != new.http),
            ("db", old.db != new.db),
            (
                "http timeouts and http_max_connections",
                old.http_header_timeout != new.http_header_timeout
                    || old.http_idle_timeout != new.http_idle_timeout
                    || old.http_max_connections != new.http_max_connections,
            ),
        ] {
            if changed {
                tracing::warn!(
                    what,
                    "changed in the file but needs a restart; kept as it was"
                );
            }
        }
        state.tokens.store(Arc::new(Tokens::new(&new.tokens)));
        state.limits.store(Arc::new(RateLimits::new(
            new.limits.register_per_sec,
            new.limits.read_per_sec,
        )));
        self.hub.set_policy(new.rebalance);
        if let Err((addr, err)) = self.apply_forwards(&new.forwards, &mut applied).await {
            tracing::error!(%addr, %err, "reload could not bind a forward listener; the others are applied");
        }
        self.apply_statics(&new.statics, &new.forwards, &mut applied);
        applied
    }
}

/// A static instance as the registry holds it: its TTL is the longest allowed, as its
/// health checks, not heartbeats, decide whether it is up.
fn static_spec(s: &StaticConfig) -> InstanceSpec {
    InstanceSpec {
        address: s.address.clone(),
        weight: s.weight,
        max_connections: s.max_connections,
        zone: None,
        tags: vec!["static".to_owned()],
        metadata: Default::default(),
        ttl_secs: 300,
    }
}
