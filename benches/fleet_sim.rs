//! Rebalancing at internet scale, simulated on the registry's real core: 1,000 servers
//! and 10 million devices through a 10 % scale-out, a zone outage of a third of the
//! fleet (and its return), and a rolling restart of every server. Prints one row per
//! heartbeat round and each goal beside its figure. No sockets: simulated time.
//!
//! ```text
//! cargo bench --bench fleet_sim
//! SB_SIM_SERVERS=100 SB_SIM_DEVICES=1000000 cargo bench --bench fleet_sim
//! SB_SIM_SCENARIOS=scale-out SB_SIM_SHED_RATIO=0.02 cargo bench --bench fleet_sim
//! ```
//! Knobs: `SB_SIM_SERVERS`, `SB_SIM_DEVICES`, `SB_SIM_SCENARIOS`
//! (`scale-out,outage,rolling`), `SB_SIM_SHED_RATIO` and `SB_SIM_TOLERANCE` (as
//! fractions, e.g. 0.01), `SB_SIM_JITTER_MS`, `SB_SIM_TTL_SECS`, `SB_SIM_SEED`.

mod support;

use std::time::Instant;

use support::knobs;
use switchboard::registry::RebalancePolicy;
use switchboard::simulation::{self, Phase, Settings};

fn fraction(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| (0.0..=1.0).contains(v))
        .unwrap_or(default)
}

fn settings() -> Settings {
    let defaults = RebalancePolicy::default();
    Settings {
        servers: knobs::count("SB_SIM_SERVERS", 1_000, 3, 100_000),
        devices: knobs::num("SB_SIM_DEVICES", 10_000_000, 1, 1_000_000_000),
        ttl_secs: u32::try_from(knobs::num("SB_SIM_TTL_SECS", 15, 3, 300)).unwrap_or(15),
        seed: knobs::num("SB_SIM_SEED", 1, 0, u64::MAX),
        policy: RebalancePolicy {
            shed_max_ratio: fraction("SB_SIM_SHED_RATIO", defaults.shed_max_ratio),
            tolerance: fraction("SB_SIM_TOLERANCE", defaults.tolerance),
            reconnect_jitter_ms: knobs::num(
                "SB_SIM_JITTER_MS",
                defaults.reconnect_jitter_ms,
                0,
                3_600_000,
            ),
            ..defaults
        },
        ..Settings::default()
    }
}

fn print(phase: &Phase, took: std::time::Duration) {
    println!("{phase}");
    println!("(simulated in {:.1} s)\n", took.as_secs_f64());
}

fn main() {
    if !knobs::asked_for("fleet_sim") {
        return;
    }
    let settings = settings();
    let wanted = knobs::list("SB_SIM_SCENARIOS")
        .unwrap_or_else(|| vec!["scale-out".into(), "outage".into(), "rolling".into()]);
    println!(
        "# fleet simulation: {} servers, {} devices, ttl {} s (heartbeat every {} s), \
         tolerance {}, shed_max_ratio {}, reconnect jitter {} ms, /servers limit {}, seed {}\n",
        settings.servers,
        settings.devices,
        settings.ttl_secs,
        (settings.ttl_secs / 3).max(1),
        settings.policy.tolerance,
        settings.policy.shed_max_ratio,
        settings.policy.reconnect_jitter_ms,
        settings.list_limit,
        settings.seed
    );
    let mut missed = 0;
    let mut report = |phase: &Phase, took| {
        print(phase, took);
        missed += phase.goals.iter().filter(|g| !g.met).count();
    };
    for scenario in &wanted {
        let started = Instant::now();
        match scenario.as_str() {
            "scale-out" => report(
                &simulation::scale_out(settings.clone(), 0.10, 200),
                started.elapsed(),
            ),
            "outage" => {
                let (outage, back) = simulation::zone_outage(settings.clone(), 200);
                let took = started.elapsed();
                report(&outage, took);
                report(&back, took);
            }
            "rolling" => report(
                &simulation::rolling_restart(settings.clone(), 0.05, 2, 12, 200),
                started.elapsed(),
            ),
            other => {
                eprintln!("fleet_sim: unknown scenario {other:?} (scale-out, outage, rolling)")
            }
        }
    }
    println!("goals missed: {missed}");
}
