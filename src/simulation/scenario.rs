//! The scenarios of the simulation: a scale-out, a zone outage and its return, a
//! rolling restart of every server. Each runs a fresh [`Fleet`] and judges it against
//! the goals of issue 08.

use super::fleet::{Fleet, Settings};
use super::report::{Goal, Phase, Round};

/// The spread every goal asks for: within ±10 % of the mean.
pub const GOAL_TOLERANCE: f64 = 0.10;

/// Rounds a settled fleet is watched for `shed` hints (there must be none).
pub const QUIET_ROUNDS: usize = 10;

/// A round counts as converged when it ends within the tolerance with at most this
/// share of the devices still waiting to reconnect.
const SETTLED_IN_FLIGHT: f64 = 0.01;

/// Runs rounds until the fleet is within the tolerance, then [`QUIET_ROUNDS`] more,
/// at most `max_rounds` in all.
fn settle(fleet: &mut Fleet, phase: &mut Phase, max_rounds: usize) {
    let devices = fleet.settings().devices as f64;
    let mut quiet_left = QUIET_ROUNDS;
    while phase.rounds.len() < max_rounds && quiet_left > 0 {
        let round = fleet.run_round();
        phase.moved += round.moved;
        if phase.converged_after.is_some() {
            phase.shed_after_converged += round.shed;
            quiet_left -= 1;
        } else if settled(&round, devices) {
            phase.converged_after = Some(phase.rounds.len() + 1);
        }
        phase.rounds.push(round);
    }
}

fn settled(round: &Round, devices: f64) -> bool {
    round.within(GOAL_TOLERANCE) && round.in_flight as f64 <= devices * SETTLED_IN_FLIGHT
}

fn rounds_goal(phase: &Phase, max: usize) -> Goal {
    let figure = phase
        .converged_after
        .map_or("never".to_owned(), |n| format!("{n} rounds"));
    Goal::new(
        format!("within ±10 % of the mean in ≤ {max} rounds"),
        figure,
        phase.converged_after.is_some_and(|n| n <= max),
    )
}

fn shed_ratio_goal(phase: &Phase) -> Goal {
    let ratio = phase.max_shed_ratio();
    Goal::new(
        "≤ 1 % of a server's connections shed per round",
        format!("{:.2} % at most", 100.0 * ratio),
        ratio <= 0.01 + 1e-9,
    )
}

fn moved_goal(phase: &Phase, what: &str) -> Goal {
    let ratio = phase.moved as f64 / phase.needed.max(1) as f64;
    Goal::new(
        format!("moved ≤ 1.2 × {what}"),
        format!("{:.2} × ({} of {})", ratio, phase.moved, phase.needed),
        ratio <= 1.2,
    )
}

fn quiet_goal(phase: &Phase) -> Goal {
    Goal::new(
        format!("no oscillation: shed = 0 for {QUIET_ROUNDS} rounds once within ±10 %"),
        format!("{} shed", phase.shed_after_converged),
        phase.converged_after.is_some() && phase.shed_after_converged == 0,
    )
}

fn reconnect_share_goal(phase: &Phase) -> Goal {
    let worst = phase.worst_reconnect_share();
    Goal::new(
        "no server > 2 × its fair share of reconnects in any second",
        worst.map_or("no second to judge".to_owned(), |w| {
            format!("{w:.2} × at worst")
        }),
        worst.is_some_and(|w| w <= 2.0),
    )
}

/// Adds `grow_by` × the fleet's servers, empty, and watches them fill.
pub fn scale_out(settings: Settings, grow_by: f64, max_rounds: usize) -> Phase {
    let mut fleet = Fleet::new(settings);
    let before = fleet.len();
    let added = ((before as f64 * grow_by).round() as usize).max(1);
    for _ in 0..added {
        fleet.add_server();
    }
    let mut phase = Phase {
        title: format!(
            "scale-out {before} -> {} servers, {} devices",
            before + added,
            fleet.settings().devices
        ),
        needed: fleet.surplus(),
        print_every: 1,
        ..Phase::default()
    };
    settle(&mut fleet, &mut phase, max_rounds);
    phase.goals = vec![
        rounds_goal(&phase, 10),
        shed_ratio_goal(&phase),
        moved_goal(&phase, "the surplus above the mean"),
        quiet_goal(&phase),
    ];
    phase
}

/// A third of the fleet (one zone of three) crashes at once; later it comes back
/// empty. Answers the outage and the return as two phases.
pub fn zone_outage(settings: Settings, max_rounds: usize) -> (Phase, Phase) {
    let mut fleet = Fleet::new(settings);
    let lost: Vec<usize> = (0..fleet.len())
        .filter(|&i| fleet.zone(i) == "z0")
        .collect();
    let mut outage = Phase {
        title: format!(
            "zone outage: {} of {} servers crash, {} devices",
            lost.len(),
            fleet.len(),
            fleet.settings().devices
        ),
        needed: lost.iter().map(|&i| fleet.connections(i)).sum(),
        print_every: 1,
        ..Phase::default()
    };
    for &i in &lost {
        fleet.crash(i);
    }
    settle(&mut fleet, &mut outage, max_rounds);
    outage.goals = vec![
        Goal::new(
            "the lost devices spread within ±10 % over the survivors",
            outage
                .converged_after
                .map_or("never".to_owned(), |n| format!("after {n} rounds")),
            outage.converged_after.is_some(),
        ),
        reconnect_share_goal(&outage),
        moved_goal(&outage, "the lost servers' devices"),
        quiet_goal(&outage),
    ];

    for &i in &lost {
        fleet.start(i);
    }
    let mut back = Phase {
        title: format!("zone back: {} servers restart empty", lost.len()),
        needed: fleet.surplus(),
        print_every: 5,
        ..Phase::default()
    };
    settle(&mut fleet, &mut back, max_rounds);
    back.goals = vec![
        Goal::new(
            "converges (half as many servers again at ≤ 1 %/round: no 10-round goal)",
            back.converged_after
                .map_or("never".to_owned(), |n| format!("{n} rounds")),
            back.converged_after.is_some(),
        ),
        shed_ratio_goal(&back),
        moved_goal(&back, "the surplus above the mean"),
        quiet_goal(&back),
    ];
    (outage, back)
}

/// Restarts every server, `batch` of the fleet at a time (a share, e.g. 0.05): each
/// deregisters and closes, is down for `down_rounds`, comes back empty; the next
/// batch starts `gap_rounds` after the previous one did.
pub fn rolling_restart(
    settings: Settings,
    batch: f64,
    down_rounds: usize,
    gap_rounds: usize,
    max_rounds_after: usize,
) -> Phase {
    let mut fleet = Fleet::new(settings);
    let servers = fleet.len();
    let per_batch = ((servers as f64 * batch).round() as usize).clamp(1, servers);
    let mut phase = Phase {
        title: format!(
            "rolling restart of {servers} servers, {per_batch} at a time, {} devices",
            fleet.settings().devices
        ),
        print_every: gap_rounds.max(1),
        ..Phase::default()
    };
    let gap_rounds = gap_rounds.max(down_rounds + 1);
    for first in (0..servers).step_by(per_batch) {
        let batch: Vec<usize> = (first..(first + per_batch).min(servers)).collect();
        // Their devices must move, and the servers must be refilled when back.
        phase.needed += batch.iter().map(|&i| fleet.connections(i)).sum::<u64>();
        for &i in &batch {
            fleet.stop(i);
        }
        for round in 0..gap_rounds {
            if round == down_rounds {
                for &i in &batch {
                    fleet.start(i);
                }
                phase.needed += fleet.surplus();
            }
            let round = fleet.run_round();
            phase.moved += round.moved;
            phase.rounds.push(round);
        }
    }
    let restarting = phase.rounds.len();
    let mut after = Phase::default();
    settle(&mut fleet, &mut after, max_rounds_after);
    phase.converged_after = after.converged_after.map(|n| restarting + n);
    phase.moved += after.moved;
    phase.shed_after_converged = after.shed_after_converged;
    phase.rounds.extend(after.rounds);
    if let Some(worst) = phase.worst_reconnect_share() {
        // Not a goal here: the servers of the batch before are still refilling, and
        // the ranking rightly sends them more of the next batch's devices.
        phase.notes.push(format!(
            "most reconnects one server took in a second: {worst:.2} × an even split"
        ));
    }
    phase.goals = vec![
        Goal::new(
            "within ±10 % in ≤ 10 rounds after the last batch",
            after
                .converged_after
                .map_or("never".to_owned(), |n| format!("{n} rounds")),
            after.converged_after.is_some_and(|n| n <= 10),
        ),
        shed_ratio_goal(&phase),
        moved_goal(&phase, "the restarted servers' devices and their refill"),
        quiet_goal(&phase),
    ];
    phase
}
