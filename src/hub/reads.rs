//! The hub's answers: `/servers`, the forwarder's candidates, DNS addresses, the
//! listings and summaries, blocking waits for a change, and static instances and
//! their health as the forwarder reports it. Each takes one service's lock for the
//! table's work; the ranking itself is the table's. Writes nothing to the store.

use std::sync::Arc;
use std::time::Duration;

use super::{ForwardTarget, Hub, MAX_WAIT_ROUNDS, UNKNOWN_SERVICE};
use crate::lease;
use crate::metrics as names;
use crate::registry::table::{self, RankQuery, Ranked, ServiceSummary};
use crate::registry::{Instance, InstanceSpec, Origin, RebalancePolicy, ServiceTable, validate};

impl Hub {
    /// Replaces the rebalancing policy (a reload).
    pub fn set_policy(&self, policy: RebalancePolicy) {
        self.inner.policy.store(Arc::new(policy));
    }

    /// Takes a static instance out of the registry (a reload removed it).
    pub fn remove_static(&self, service: &str, id: &str) {
        self.forget(service, id);
        self.drop_if_unused(service);
    }

    /// How long clients should spread their reconnects over, for `/servers` answers.
    pub fn reconnect_jitter_ms(&self) -> u64 {
        self.inner.policy.load().reconnect_jitter_ms
    }

    /// Ranks a service for one answer, counting the hand-out of the first server.
    /// An unknown service answers an empty list.
    pub fn servers(&self, service: &str, query: &RankQuery<'_>) -> Ranked {
        let now = self.now();
        match self.slot(service) {
            Some(slot) => {
                slot.counters.servers_answers.increment(1);
                slot.apply(|t| Ranked::of(t, query, now))
            }
            // Not labelled by the asked name: anyone may ask for any name, and label
            // values must stay bounded.
            None => {
                metrics::counter!(names::SERVERS_ANSWERS, "service" => UNKNOWN_SERVICE)
                    .increment(1);
                Ranked {
                    version: 0,
                    servers: Vec::new(),
                    self_preservation: false,
                }
            }
        }
    }

    /// Candidates for one forwarded connection, best first, by the same ranking as
    /// `/servers`, without the backends `is_out` names; the first counts a hand-out.
    pub fn forward_candidates(
        &self,
        service: &str,
        key: Option<&[u8]>,
        limit: usize,
        is_out: &dyn Fn(&str) -> bool,
    ) -> Vec<ForwardTarget> {
        let mut targets = Vec::new();
        self.rank(
            service,
            key,
            limit,
            &|i| is_out(&i.spec.address),
            &mut |i| {
                targets.push(ForwardTarget {
                    id: i.id.clone(),
                    address: i.spec.address.clone(),
                });
            },
        );
        targets
    }

    /// The addresses DNS hands out for a service, best first by the `/servers`
    /// ranking, among those `keep` accepts (the record type's address family); the
    /// first counts a hand-out. `None` when the service is unknown (`NXDOMAIN`).
    pub fn dns_addresses(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let mut addresses = Vec::new();
        let known = self.dns_each(service, limit, keep, &mut |a| addresses.push(a.to_owned()));
        known.then_some(addresses)
    }

    /// [`Hub::dns_addresses`] handed to `each` address by address under the service's
    /// lock, nothing copied: the DNS hot path writes them into its answer. False when
    /// the service is unknown.
    pub fn dns_each(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(&str),
    ) -> bool {
        let exclude = |i: &Instance| i.forward_only || !keep(&i.spec.address);
        self.rank(service, None, limit, &exclude, &mut |i| {
            each(&i.spec.address)
        })
    }

    /// The one ranking every adapter above goes through (any zone, any tag): the
    /// service's answer without the instances `exclude` names, handed to `each` under
    /// the service's lock; the first counts a hand-out. False for an unknown service.
    fn rank(
        &self,
        service: &str,
        key: Option<&[u8]>,
        limit: usize,
        exclude: &dyn Fn(&Instance) -> bool,
        each: &mut dyn FnMut(&Instance),
    ) -> bool {
        let Some(slot) = self.slot(service) else {
            return false;
        };
        let now = self.now();
        let query = RankQuery {
            limit,
            zone: None,
            key,
            tag: None,
        };
        slot.apply(|t| t.rank(&query, now, exclude, each));
        true
    }

    /// Counts one hand-out for an instance (the forwarder's retry on a later candidate).
    pub fn count_hand_out(&self, service: &str, id: &str) {
        if let Some(slot) = self.slot(service) {
            let now = self.now();
            slot.apply(|t| t.count_hand_out_of(id, now));
        }
    }

    /// Adds a static instance from the config file, in memory only, under an id
    /// derived from service and address (stable across restarts and nodes). It stays
    /// down until its first health check passes. A `unix:` one is forward-only.
    pub fn add_static(&self, service: &str, spec: InstanceSpec) -> String {
        let id = format!(
            "static-{:016x}",
            xxhash_rust::xxh3::xxh3_64(format!("{service}/{}", spec.address).as_bytes())
        );
        let now = self.now();
        // A device cannot reach a socket on this host's file system.
        let forward_only = validate::unix_socket_path(&spec.address).is_some();
        let mut instance = table::new_instance(
            id.clone(),
            spec,
            lease::hash(&lease::new_lease()),
            now,
            self.inner.clock.unix_now_ms(),
        );
        instance.origin = Origin::Static;
        instance.down = true;
        instance.forward_only = forward_only;
        self.slot_or_create(service)
            .apply(|t| t.upsert(instance, now));
        id
    }

    /// Records a static instance's health check and the forwarder's connection count.
    pub fn set_health(&self, service: &str, id: &str, up: bool, connections: u64) {
        if let Some(slot) = self.slot(service) {
            let now = self.now();
            slot.apply(|t| t.set_health(id, up, connections, now));
        }
    }

    /// Waits until the service's version differs from `since`, or `wait` passes.
    /// Costs a watch receiver, not a thread.
    ///
    /// A name with no service creates nothing: its version is 0, so the wait ends at
    /// once unless `since` is 0; then it waits for the service to appear.
    pub async fn wait_for_change(&self, service: &str, since: u64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        // Bounded: each round ends at the deadline or on a service creation, and a
        // round that finds the service ends the wait.
        for _ in 0..MAX_WAIT_ROUNDS {
            if let Some(slot) = self.slot(service) {
                // The receiver alone, not the slot: a service dropped meanwhile
                // closes the watch and ends the wait.
                let mut versions = slot.version.subscribe();
                drop(slot);
                let changed = versions.wait_for(|v| *v != since);
                let _ = tokio::time::timeout_at(deadline, changed).await;
                return;
            }
            if since != 0 {
                return;
            }
            let mut created = self.inner.created.subscribe();
            if self.slot(service).is_some() {
                continue;
            }
            if tokio::time::timeout_at(deadline, created.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The summary of every service (`default` always included), sorted by name.
    pub fn summaries(&self) -> Vec<ServiceSummary> {
        let now = self.now();
        let slots = self.all_slots();
        let mut summaries: Vec<ServiceSummary> =
            slots.iter().map(|s| s.lock().summary(now)).collect();
        if !summaries.iter().any(|s| s.name == "default") {
            // `default` exists implicitly, with nothing in it.
            summaries.push(ServiceTable::new("default").summary(now));
        }
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        summaries
    }

    /// The live instances (up or draining) of one service, or of every service, by
    /// service name: what a scraper is pointed at (`/v1/sd/prometheus`). Forward-only
    /// (`unix:`) instances have no address to scrape and are left out.
    pub fn live_views(&self, service: Option<&str>) -> Vec<(String, Vec<table::InstanceView>)> {
        let now = self.now();
        let slots = match service {
            Some(name) => self.slot(name).into_iter().collect(),
            None => self.all_slots(),
        };
        let mut out: Vec<(String, Vec<table::InstanceView>)> = slots
            .iter()
            .map(|slot| {
                let table = slot.lock();
                let views = table
                    .listing(now)
                    .into_iter()
                    .filter(|v| v.instance.is_live(now) && !v.instance.forward_only)
                    .collect();
                (table.name().to_owned(), views)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every instance of a service as cached cards (see
    /// [`ServiceTable::listing_cards`]); rows are taken under the lock, rendering of
    /// the answer happens outside it.
    pub fn listing_cards(
        &self,
        service: &str,
        render: &dyn Fn(&crate::registry::Instance) -> table::Card,
    ) -> Vec<table::CardRow> {
        let now = self.now();
        self.slot(service)
            .map(|slot| slot.lock().listing_cards(now, render))
            .unwrap_or_default()
    }
}
