//! The forwarder's supervisor: starts, keeps and stops the forward listeners (TCP and
//! UDP) and the static instances' health loops, and shares the open-file limit out
//! (`rlimit.rs` does the arithmetic) when the server starts and at each reload: the
//! forwarder's fd budget, and a connection cap for each new listener (derived when
//! `max_connections` is unset, clamped with a warning when it is more than the budget
//! holds). A listener that is no longer wanted stops accepting and lets its relayed
//! connections run out; a new one is bound; an unchanged one is left alone, with its
//! cap (the shared count is what holds every listener within the budget).
//!
//! A TLS-terminating listener loads its certificate when it starts; a reload reads
//! the files of every kept one again (the rotation), and a file that fails to load
//! leaves the running certificate.
//!
//! Owns what runs; `reload.rs` decides what should. No parsing, no HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::Share;
use super::listener::Listener;
use super::stats::{ForwardBoard, ListenerStats};
use super::udp::{DEFAULT_MAX_SESSIONS, UdpListener};
use super::workers;
use super::{LiveCounts, health};
use crate::config::{Config, ForwardConfig, ForwardProtocol, StaticConfig};
use crate::hub::Hub;
use crate::locks::lock;
use crate::registry::InstanceSpec;
use crate::rlimit::{self, Budget, Cap};
use crate::tls::ServerTls;

/// A forward listener that runs, with the configuration it was started from.
struct RunningListener {
    configured: ForwardConfig,
    addr: SocketAddr,
    stop: CancellationToken,
    /// Its TLS termination, whose files a reload reads again.
    tls: Option<Arc<ServerTls>>,
}

/// A static instance that runs, with its health-check loop's stop.
struct RunningStatic {
    configured: StaticConfig,
    id: String,
    stop: CancellationToken,
}

/// The forward listeners and static instances that run, and the fd budget they share.
pub struct Supervisor {
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
    /// The soft open-file limit read at start, which the fd budget shares out.
    fd_limit: u64,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
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

impl Supervisor {
    /// Nothing running yet; listeners will share `fd_limit` (the soft
    /// `RLIMIT_NOFILE`) out as [`Supervisor::set_budget`] says.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Hub,
        board: Arc<ForwardBoard>,
        relays: TaskTracker,
        stop_accepting: CancellationToken,
        stop_relays: CancellationToken,
        checks: TaskTracker,
        stop_checks: CancellationToken,
        fd_limit: u64,
    ) -> Self {
        Supervisor {
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
            fd_limit,
        }
    }

    /// Shares the open-file limit out for `config` (the reserve first, the rest for
    /// the forwarder) and sets the forwarder's fd budget to its part; logs it. The
    /// DNS server's TCP connections (`dns_tcp`, 0 without `[dns]`) are part of the
    /// reserve. Call it inside the runtime the listeners run on.
    pub fn set_budget(&self, config: &Config, dns_tcp: u64) -> Budget {
        let loops = u64::try_from(workers::loops()).unwrap_or(1);
        let needs = rlimit::Needs {
            http_max_connections: u64::try_from(config.http_max_connections).unwrap_or(u64::MAX),
            forward_loops: loops.saturating_mul(config.forwards.len() as u64),
            statics: config.statics.len() as u64,
            dns_tcp_connections: dns_tcp,
        };
        let budget = rlimit::budget(self.fd_limit, &needs);
        self.board.fds().set_total(budget.forward);
        tracing::info!(
            limit = budget.limit,
            reserve = budget.reserve,
            api = budget.api,
            forwarder = budget.forward,
            "fd budget: the forwarder holds at most {} descriptors; {} are kept for the API, \
             the store, health checks and listeners",
            budget.forward,
            budget.reserve,
        );
        if budget.forward == 0 && !config.forwards.is_empty() {
            tracing::warn!(
                limit = budget.limit,
                reserve = budget.reserve,
                "the open file limit leaves the forwarder no descriptor: every device will be refused; \
                 raise the hard limit (systemd LimitNOFILE=, ulimit -Hn)"
            );
        }
        budget
    }

    /// The connection cap of each listener of `wanted`, out of the fd budget.
    fn caps(&self, wanted: &[ForwardConfig]) -> Vec<Cap> {
        let asked: Vec<rlimit::Wanted> = wanted
            .iter()
            .map(|f| rlimit::Wanted {
                max_connections: f.max_connections,
                cost: match f.protocol {
                    ForwardProtocol::Tcp => rlimit::TCP_COST,
                    ForwardProtocol::Udp => rlimit::UDP_COST,
                },
            })
            .collect();
        rlimit::caps(self.board.fds().total(), &asked)
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
        let caps = self.caps(wanted);
        for (forward, cap) in wanted.iter().zip(caps) {
            if lock(&self.listeners)
                .iter()
                .any(|l| &l.configured == forward)
            {
                continue;
            }
            let stop = self.stop_accepting.child_token();
            let (addr, tls) = match forward.protocol {
                ForwardProtocol::Tcp => self.start_tcp(forward, cap, stop.clone()).await,
                ForwardProtocol::Udp => {
                    (self.start_udp(forward, cap, stop.clone()).await).map(|addr| (addr, None))
                }
            }
            .map_err(|e| (forward.listen, e))?;
            lock(&self.listeners).push(RunningListener {
                configured: forward.clone(),
                addr,
                stop,
                tls,
            });
            applied.listeners_added += 1;
        }
        Ok(())
    }

    /// A bound listener's configuration (with the address really bound and `cap`
    /// as its `max_connections`, said when it is not the configured one) and its
    /// figures, on the board from now on.
    fn listener_parts(
        &self,
        forward: &ForwardConfig,
        addr: SocketAddr,
        cap: Cap,
    ) -> (ForwardConfig, Arc<ListenerStats>) {
        let stats = Arc::new(ListenerStats::new(addr, &forward.service));
        self.board.add(Arc::clone(&stats));
        let max_connections = match cap {
            Cap::Configured(n) => n,
            Cap::Clamped {
                configured,
                allowed,
            } => {
                tracing::warn!(
                    listener = %addr, service = %forward.service, configured, allowed,
                    "max_connections {configured} of forward listener {addr} is more than the \
                     open file limit allows: clamped to {allowed}; raise the hard limit \
                     (systemd LimitNOFILE=, ulimit -Hn) or lower max_connections"
                );
                allowed
            }
            Cap::Derived(n) => {
                // A UDP table stays within its default size, whatever the budget.
                let n = match forward.protocol {
                    ForwardProtocol::Tcp => n,
                    ForwardProtocol::Udp => n.min(DEFAULT_MAX_SESSIONS as u64),
                };
                tracing::info!(
                    listener = %addr, service = %forward.service, max_connections = n,
                    "max_connections of forward listener {addr} derived from the fd budget: {n}"
                );
                n
            }
        };
        let config = ForwardConfig {
            listen: addr,
            max_connections: Some(max_connections),
            ..forward.clone()
        };
        (config, stats)
    }

    /// Reads the certificate files of every running TLS listener again: new
    /// connections get what they hold now. A file that fails changes nothing and is
    /// logged.
    pub fn reload_tls(&self) {
        for l in lock(&self.listeners).iter() {
            if let (Some(tls), Some(files)) = (&l.tls, &l.configured.edge.tls)
                && let Err(err) = tls.reload(&files.files)
            {
                tracing::error!(listen = %l.addr, %err, "tls: the new certificate was not loaded; the running one stays");
            }
        }
    }

    /// Binds and starts a TCP forward listener (loading its certificate first when it
    /// terminates TLS); answers where it listens and its TLS.
    async fn start_tcp(
        &self,
        forward: &ForwardConfig,
        cap: Cap,
        stop: CancellationToken,
    ) -> std::io::Result<(SocketAddr, Option<Arc<ServerTls>>)> {
        let transport = workers::Transport::Tcp {
            keepalive: forward.tcp_keepalive,
        };
        let bound = workers::bind_listener(forward.listen, transport)?;
        let addr = bound.local;
        // Labelled by the bound address, as the listener's other metrics.
        let tls = match &forward.edge.tls {
            None => None,
            Some(tls) => Some(Arc::new(
                load_tls(addr, tls).map_err(|err| std::io::Error::other(err.to_string()))?,
            )),
        };
        tracing::info!(service = %forward.service, "forward listening on {addr}");
        let (config, stats) = self.listener_parts(forward, addr, cap);
        let share = Share {
            fds: Arc::clone(self.board.fds()),
            cap_from_budget: !matches!(cap, Cap::Configured(_)),
        };
        let listener = Arc::new(Listener::new(
            config,
            self.hub.clone(),
            Arc::clone(&self.counts),
            self.stop_relays.clone(),
            stats,
            share,
            tls.clone(),
        ));
        workers::run(bound, stop, &self.relays, move |socket, stop, tracker| {
            Arc::clone(&listener).serve(socket, stop, tracker)
        })?;
        Ok((addr, tls))
    }

    /// Binds and starts a UDP forward listener; answers where it listens.
    async fn start_udp(
        &self,
        forward: &ForwardConfig,
        cap: Cap,
        stop: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let bound = workers::bind_listener(forward.listen, workers::Transport::Udp)?;
        let addr = bound.local;
        tracing::info!(service = %forward.service, "forward listening on udp {addr}");
        let (config, stats) = self.listener_parts(forward, addr, cap);
        let listener = Arc::new(UdpListener::new(
            config,
            self.hub.clone(),
            Arc::clone(&self.counts),
            self.stop_relays.clone(),
            stats,
            bound.sockets(),
            Arc::clone(self.board.fds()),
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

/// The TLS termination of the forward listener on `listen`, loaded from its files
/// (`switchboard check` loads them the same way).
///
/// # Errors
/// [`crate::tls::TlsError`] naming the listener's key of the file at fault.
pub fn load_tls(
    listen: SocketAddr,
    tls: &crate::config::ForwardTls,
) -> Result<ServerTls, crate::tls::TlsError> {
    let alpn = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    ServerTls::load(&tls.files, &listen.to_string(), alpn)
}
