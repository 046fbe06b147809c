//! The loop that feeds the history: every `history_sample_secs`, one sample of every
//! service the hub holds, each table walked once under its own lock (whole-table work
//! once per tick, never per request). Until the shutdown token fires.
//!
//! Must not keep anything itself (`History` does) nor change a table beyond taking
//! its activity counts.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{History, Tick};
use crate::clock::Clock;
use crate::hub::Hub;
use crate::registry::{Millis, ServiceTable};

/// Samples `hub` into `history` every [`History::sample_every`] until `cancel` fires;
/// the first sample at once.
pub async fn run(hub: Hub, history: Arc<History>, cancel: CancellationToken) {
    // Tokio's clock, as the registry's: a test that moves it moves the samples.
    let clock = Clock::start();
    let mut tick = tokio::time::interval(history.sample_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => sample(&hub, &history, clock.unix_now_ms()),
        }
    }
}

/// One sample of every service, at `unix_ms`.
pub fn sample(hub: &Hub, history: &History, unix_ms: u64) {
    history.record(unix_ms, |tick| {
        hub.each_table(&mut |table, now| sample_table(tick, table, now));
    });
}

/// One service's part of a sample: its table walked once (the caller holds its lock),
/// each instance handed to the history, then the service's figures.
pub fn sample_table(tick: &mut Tick<'_>, table: &mut ServiceTable, now: Millis) {
    let mut service = tick.service(table.name());
    let figures = table.sample(now, &mut |instance, state| {
        service.instance(
            &instance.id,
            &instance.spec.address,
            instance.connections,
            state,
        );
    });
    service.finish(&figures);
}
