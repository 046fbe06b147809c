//! What a running server can change without a restart (SPEC section 4, `SIGHUP`):
//! forward listeners, static instances, tokens, rate limits and `[rebalance]`. Diffs
//! a new validated [`Config`] against the running one, warns about what needs a
//! restart, and hands the rest on: listeners and static instances to the forwarder's
//! [`Supervisor`], `[rebalance]` to the hub, tokens and rate limits to the API
//! through the caller's `api_settings`. Registrations are never touched.
//!
//! Owns no parsing (`config/` validates before anything is applied), no running task
//! and nothing of the API.

use crate::config::Config;
use crate::forwarder::supervisor::Supervisor;
use crate::hub::Hub;

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

/// Applies a reloaded configuration: tokens and limits (`api_settings`), rebalancing,
/// the fd budget, listeners and static instances. What cannot change live (the HTTP
/// address, the store, the HTTP limits) is kept, with a warning when it differs.
pub async fn apply(
    old: &Config,
    new: &Config,
    supervisor: &Supervisor,
    hub: &Hub,
    api_settings: &dyn Fn(&Config),
) -> Applied {
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
    api_settings(new);
    hub.set_policy(new.rebalance);
    supervisor.set_budget(new, dns_tcp_connections(new));
    if let Err((addr, err)) = supervisor.apply_forwards(&new.forwards, &mut applied).await {
        tracing::error!(%addr, %err, "reload could not bind a forward listener; the others are applied");
    }
    supervisor.apply_statics(&new.statics, &new.forwards, &mut applied);
    applied
}
