//! What a running server can change without a restart (SPEC sections 4 and 9,
//! `SIGHUP`): forward listeners, static instances, tokens, rate limits, `[rebalance]`
//! and the API's certificate. Diffs a new validated [`Config`] against the running
//! one, warns about what needs a restart, and hands the rest on: listeners and static
//! instances to the forwarder's [`Supervisor`], `[rebalance]` to the hub, the `[tls]`
//! files to the API's [`ServerTls`] (read again even when the file names did not
//! change: that is how a certificate is rotated), tokens and rate limits to the API
//! through the caller's `api_settings`. Registrations are never touched.
//!
//! Owns no parsing (`config/` validates before anything is applied), no running task
//! and nothing of the API.

use crate::config::Config;
use crate::forwarder::supervisor::Supervisor;
use crate::hub::Hub;
use crate::tls::ServerTls;

pub use crate::forwarder::supervisor::Applied;

/// The descriptors the DNS server's TCP side may hold under `config` (0 without
/// `[dns]`), for the fd budget's reserve.
pub fn dns_tcp_connections(config: &Config) -> u64 {
    if config.dns.is_some() {
        crate::dns::MAX_TCP_CONNECTIONS as u64
    } else {
        0
    }
}

/// The running parts a reload hands its changes to.
#[allow(missing_debug_implementations)] // `api_settings` is a closure.
pub struct Parts<'a> {
    /// The forward listeners and static instances.
    pub supervisor: &'a Supervisor,
    /// The registry (`[rebalance]`).
    pub hub: &'a Hub,
    /// The API's TLS, when it serves HTTPS.
    pub api_tls: Option<&'a ServerTls>,
    /// Takes the tokens and rate limits (`api::Shared::apply_settings`).
    pub api_settings: &'a dyn Fn(&Config),
}

/// Applies a reloaded configuration: the API's certificate, tokens and limits,
/// rebalancing, the fd budget, listeners and static instances. What cannot change
/// live (the HTTP address, the store, the HTTP limits, turning `[tls]` on or off) is
/// kept, with a warning when it differs; a certificate that fails to load leaves the
/// running one, logged.
pub async fn apply(old: &Config, new: &Config, parts: &Parts<'_>) -> Applied {
    let Parts {
        supervisor,
        hub,
        api_tls,
        api_settings,
    } = *parts;
    let mut applied = Applied::default();
    for (what, changed) in [
        (
            "tls (turning HTTPS on or off)",
            old.tls.is_some() != new.tls.is_some(),
        ),
        ("http", old.http != new.http),
        ("db", old.db != new.db),
        (
            "http timeouts and http_max_connections",
            old.http_header_timeout != new.http_header_timeout
                || old.http_idle_timeout != new.http_idle_timeout
                || old.http_max_connections != new.http_max_connections,
        ),
        ("[dashboard] history keys", old.dashboard != new.dashboard),
    ] {
        if changed {
            tracing::warn!(
                what,
                "changed in the file but needs a restart; kept as it was"
            );
        }
    }
    if let (Some(api_tls), Some(files)) = (api_tls, &new.tls)
        && let Err(err) = api_tls.reload(files)
    {
        tracing::error!(%err, "tls: the new certificate was not loaded; the running one stays");
    }
    // Turning HTTPS on needs a restart, so the running one's client-certificate rule
    // stays with the running listener.
    let mut settings = new.clone();
    if old.tls.is_some() != new.tls.is_some() {
        settings.tls.clone_from(&old.tls);
    }
    api_settings(&settings);
    hub.set_policy(new.rebalance);
    supervisor.set_budget(new, dns_tcp_connections(new));
    // Kept listeners read their certificates again; new ones load theirs below.
    supervisor.reload_tls();
    if let Err((addr, err)) = supervisor.apply_forwards(&new.forwards, &mut applied).await {
        tracing::error!(%addr, %err, "reload could not bind a forward listener; the others are applied");
    }
    supervisor.apply_statics(&new.statics, &new.forwards, &mut applied);
    applied
}
