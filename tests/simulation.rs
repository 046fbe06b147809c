//! A small version of the rebalancing simulation (`cargo bench --bench fleet_sim` runs
//! it at 1,000 servers and 10 million devices): the registry's real core on a
//! simulated clock must meet every goal of a scale-out, a zone outage and its return,
//! and a rolling restart.

use switchboard::simulation::{self, Phase, Settings};

fn small() -> Settings {
    Settings {
        servers: 60,
        devices: 120_000,
        ..Settings::default()
    }
}

fn assert_met(phase: &Phase) {
    assert!(phase.all_met(), "goals missed:\n{phase}");
}

#[test]
fn a_ten_percent_scale_out_evens_out_within_ten_rounds_and_then_stays_quiet() {
    let phase = simulation::scale_out(small(), 0.10, 60);
    assert_met(&phase);
    assert!(phase.converged_after.is_some_and(|n| n <= 10), "{phase}");
    assert_eq!(phase.shed_after_converged, 0, "{phase}");
}

#[test]
fn a_zone_outage_spreads_its_devices_evenly_and_the_zone_refills_when_back() {
    let (outage, back) = simulation::zone_outage(small(), 120);
    assert_met(&outage);
    assert_met(&back);
    assert!(
        outage.worst_reconnect_share().is_some_and(|w| w <= 2.0),
        "{outage}"
    );
}

#[test]
fn a_rolling_restart_moves_little_more_than_it_must() {
    let phase = simulation::rolling_restart(small(), 0.10, 2, 12, 60);
    assert_met(&phase);
}

#[test]
fn without_rebalancing_a_scale_out_never_evens_out() {
    // The control: the goals can fail, and do when `shed` is off.
    let mut settings = small();
    settings.policy.enabled = false;
    let phase = simulation::scale_out(settings, 0.10, 30);
    assert!(phase.converged_after.is_none(), "{phase}");
    assert!(!phase.all_met());
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = simulation::scale_out(small(), 0.10, 20);
    let b = simulation::scale_out(small(), 0.10, 20);
    assert_eq!(a, b);
}
