//! One forward listener: accepts devices, enforces `max_connections` and the fd
//! budget (two descriptors a relayed connection, taken from the count every listener
//! shares), and runs each connection (connect, PROXY header, relay) in its own task
//! and tracing span. A device beyond either is accepted and closed at once, so the
//! backlog does not fill and the device gets a clean refusal; past the budget that is
//! said once a second at most. The backend may be TCP or a Unix socket; TCP options
//! are set on TCP sockets only.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::backend::Backend;
use super::budget::{FdBudget, Held, Share, Throttle};
use super::connect::{self, ConnectError, FailTracker};
use super::edge::{self, Device, Opened};
use super::relay::{self, Ending};
use super::stats::{ListenerStats, Refusal};
use super::{LiveCounts, proxy_protocol, tls_relay, workers};
use crate::config::{ForwardConfig, ProxyProtocol};
use crate::hub::{ForwardTarget, Hub};
use crate::rlimit::TCP_COST;
use crate::tls::ServerTls;

/// What every connection of one listener shares.
#[derive(Debug)]
pub struct Listener {
    config: ForwardConfig,
    hub: Hub,
    fails: FailTracker,
    counts: Arc<LiveCounts>,
    /// Permits for `max_connections`; `None` when unlimited.
    slots: Option<Arc<Semaphore>>,
    /// The descriptors every forward listener of the server shares.
    fds: Arc<FdBudget>,
    /// Whether `slots` is the fd budget's cap (derived or clamped), not the
    /// configured `max_connections`: a refusal at it is then one at the budget.
    cap_from_budget: bool,
    /// Refusals at the fd budget: a warning a second at most.
    budget_log: Throttle,
    /// EMFILE/ENFILE on a backend connect: a warning a second at most.
    shortage_log: Throttle,
    /// Fires when relayed connections must stop (the drain deadline passed).
    stop_relays: CancellationToken,
    stats: Arc<ListenerStats>,
    /// TLS termination (`tls_cert`), swapped whole by a reload.
    tls: Option<Arc<ServerTls>>,
}

impl Listener {
    /// A listener for `config` over the registry, its connections taking their
    /// descriptors from `share`.
    pub fn new(
        config: ForwardConfig,
        hub: Hub,
        counts: Arc<LiveCounts>,
        stop_relays: CancellationToken,
        stats: Arc<ListenerStats>,
        share: Share,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        let slots = config.max_connections.map(|max| {
            let max = usize::try_from(max).unwrap_or(Semaphore::MAX_PERMITS);
            Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))
        });
        Listener {
            fails: FailTracker::new(config.max_fails, config.fail_timeout),
            config,
            hub,
            counts,
            slots,
            fds: share.fds,
            cap_from_budget: share.cap_from_budget,
            budget_log: Throttle::default(),
            shortage_log: Throttle::default(),
            stop_relays,
            stats,
            tls,
        }
    }

    /// Accepts until `stop_accepting` fires; every connection runs on `tracker`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut backoff = crate::backoff::AcceptBackoff::default();
        // Made once, not per connection (see relay.rs).
        let stopped = stop_accepting.cancelled();
        tokio::pin!(stopped);
        let what = format!("forward {}", self.config.listen);
        // This loop's own child of the drain token: its relays wait on it, so their
        // waiter list is this thread's, not one every worker thread locks.
        let stop_relays = self.stop_relays.child_token();
        loop {
            let Some((device, peer)) = backoff.accept(&listener, &mut stopped, &what).await else {
                break;
            };
            let permit = match &self.slots {
                None => None,
                Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) if self.cap_from_budget => {
                        self.refuse_at_budget(peer);
                        drop(device);
                        continue;
                    }
                    Err(_) => {
                        self.stats.refused(Refusal::MaxConnections);
                        tracing::debug!(%peer, "max_connections reached: closing the new connection");
                        drop(device);
                        continue;
                    }
                },
            };
            let Some(held) = self.fds.try_take(TCP_COST) else {
                self.refuse_at_budget(peer);
                drop(device);
                continue;
            };
            // `backend` is filled in once one is chosen (`handle`).
            let span = tracing::debug_span!(
                "forward",
                service = %self.config.service,
                %peer,
                backend = tracing::field::Empty
            );
            let me = Arc::clone(&self);
            let stop = stop_relays.clone();
            tracker.spawn(Box::pin(me.handle(device, peer, (permit, held), stop)).instrument(span));
        }
        // Closed before it is said to be: a device connecting after the log line
        // must be refused.
        drop(listener);
        // workers.rs says "forward listener closed" once every socket of it is.
        tracing::debug!(listen = %self.config.listen, "accept loop closed");
    }

    /// Counts a device refused at the fd budget, and says so once a second at most.
    fn refuse_at_budget(&self, peer: SocketAddr) {
        self.stats.refused(Refusal::FdBudget);
        if let Some(refused) = self.budget_log.hit() {
            tracing::warn!(
                listener = %self.config.listen, %peer, refused,
                held = self.fds.held(), budget = self.fds.total(),
                "forwarder at its fd budget: closing new device connections \
                 (the reserve is kept for the API, the store and health checks)"
            );
        }
    }

    /// Runs one accepted connection; `_slots` (its `max_connections` permit and its
    /// descriptors) are given back when it ends.
    async fn handle(
        self: Arc<Self>,
        device: TcpStream,
        peer: SocketAddr,
        _slots: (Option<OwnedSemaphorePermit>, Held),
        stop_relays: CancellationToken,
    ) {
        let _active = self.stats.opened();
        // TCP_NODELAY and keepalive come from the listening socket (workers.rs).
        // Boxed, as the connect below: the opening's state must not stay in every
        // idle relay's task.
        let opened = if edge::reads_nothing(&self.config) {
            Some(edge::plain(device, peer, &self.config))
        } else {
            Box::pin(edge::open(
                device,
                peer,
                &self.config,
                self.tls.as_deref(),
                &self.stats,
            ))
            .await
        };
        let Some(Opened {
            mut device,
            prefix,
            service,
            key,
            server_name,
            tls,
        }) = opened
        else {
            return;
        };
        // Boxed so the connect phase's state does not stay in every idle relay's task.
        let connected = Box::pin(connect::connect(
            &self.hub,
            service,
            key.as_deref(),
            self.config.connect_timeout,
            &self.fails,
            &self.stats,
        ))
        .await;
        drop(key);
        let (mut backend, target) = match connected {
            Ok(pair) => {
                tracing::Span::current().record("backend", pair.1.address.as_str());
                pair
            }
            Err(err @ ConnectError::FdShortage { .. }) => {
                self.stats.refused(Refusal::FdShortage);
                if let Some(refused) = self.shortage_log.hit() {
                    tracing::warn!(
                        listener = %self.config.listen, %peer, %err, refused,
                        "out of file descriptors connecting to a backend: device closed; \
                         the backend is not counted failed"
                    );
                }
                return;
            }
            Err(err) => {
                tracing::warn!(%service, %peer, %err, "no backend for device; closing");
                return;
            }
        };
        // The PROXY header, then the bytes the listener read first, in one write.
        let first = self.first_bytes(device.tcp(), peer, prefix, server_name, tls);
        // Matched in place, each arm awaiting its own relay: the task keeps one copy of
        // the backend socket and one relay state, no bigger than with TCP alone.
        let outcome = match &mut backend {
            Backend::Tcp(backend) => {
                let _ = backend.set_nodelay(true);
                workers::keepalive(socket2::SockRef::from(&*backend), self.config.tcp_keepalive);
                if !self.send_first(backend, first, &target).await {
                    return;
                }
                self.counts.open(&target.id);
                self.relay(&mut device, backend, &stop_relays).await
            }
            // No socket options: a Unix socket has neither Nagle's delay nor a peer
            // that can vanish without its kernel saying so.
            Backend::Unix(backend) => {
                if !self.send_first(backend, first, &target).await {
                    return;
                }
                self.counts.open(&target.id);
                self.relay(&mut device, backend, &stop_relays).await
            }
        };
        self.counts.close(&target.id);
        if let Ok((_, carried)) = &outcome {
            self.stats.carried(carried.up, carried.down);
        }
        match outcome {
            Ok((Ending::Closed, carried)) => {
                tracing::debug!(backend = %target.address, up = carried.up, down = carried.down, "closed");
            }
            Ok((Ending::IdleTimeout, _)) => {
                tracing::debug!(backend = %target.address, "idle timeout");
            }
            Ok((Ending::Shutdown, _)) => {
                tracing::debug!(backend = %target.address, "closed by shutdown");
            }
            Err(err) => {
                tracing::debug!(backend = %target.address, %err, "relay ended with an error");
            }
        }
    }

    /// Relays `device` (plain, or TLS terminated here) and `backend` until they end.
    async fn relay<B>(
        &self,
        device: &mut Device,
        backend: &mut B,
        stop: &CancellationToken,
    ) -> std::io::Result<(Ending, relay::Carried)>
    where
        B: super::backend::Stream + tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let idle = self.config.idle_timeout;
        match device {
            Device::Plain(device) => relay::relay(device, &*backend, idle, stop).await,
            Device::Tls(device) => tls_relay::relay(&mut **device, backend, idle, stop).await,
        }
    }

    /// What the backend gets before the relay starts: the PROXY header when the
    /// listener sends one (v2 with the server name and the TLS facts), then `prefix`,
    /// the bytes read off the device to pick the backend.
    fn first_bytes(
        &self,
        device: &TcpStream,
        peer: SocketAddr,
        prefix: Vec<u8>,
        server_name: Option<String>,
        tls: Option<crate::tls::SessionFacts>,
    ) -> Vec<u8> {
        let Some(version) = self.config.proxy_protocol else {
            return prefix;
        };
        // The device's TCP addresses, whatever the backend's socket family (as nginx
        // does for a unix: upstream).
        let local = device.local_addr().unwrap_or(self.config.listen);
        let mut header = proxy_protocol::header(version, peer, local);
        if version == ProxyProtocol::V2 {
            proxy_protocol::append_tlvs(&mut header, server_name.as_deref(), tls.as_ref());
        }
        header.extend_from_slice(&prefix);
        header
    }

    /// Sends `first` (see [`Listener::first_bytes`]); false when it could not be sent
    /// (the connection is then dropped).
    async fn send_first<B: AsyncWrite + Unpin>(
        &self,
        backend: &mut B,
        first: Vec<u8>,
        target: &ForwardTarget,
    ) -> bool {
        if first.is_empty() {
            return true;
        }
        // A backend that accepts but never reads must not hold the device: the first
        // bytes get the connect timeout too.
        let sent =
            tokio::time::timeout(self.config.connect_timeout, backend.write_all(&first)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(?sent, backend = %target.address, "could not send the PROXY header or the first bytes");
            return false;
        }
        true
    }
}
