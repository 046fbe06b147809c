//! Fleet benchmark: rebalancing proven on real processes over loopback (127.0.0.1).
//!
//! ```text
//! cargo bench --bench fleet
//! SB_FLEET_SCENARIOS=scale-out,kill SB_FLEET_DEVICES=4000 cargo bench --bench fleet
//! ```
//!
//! The fleet of each scenario, started afresh:
//! - the registry: the real `switchboard serve --no-forward` on a fixed free port with a
//!   SQLite file in a temp dir (so it can be restarted where everyone points, on the
//!   same store); `[rebalance] reconnect_jitter_ms` = the heartbeat interval,
//!   `shed_max_ratio` from `SB_FLEET_SHED_RATIO` (SPEC default 0.01), tolerance default;
//! - backends: this bench binary again with `SB_FLEET_ROLE=backend`, one OS process each
//!   so that one can be killed with kill -9. Each runs a [`fleet::FleetBackend`]
//!   (registers with `ttl_secs` 3, so heartbeats every second, reporting its true live
//!   count; closes what `shed` asks, spread over the interval) and prints `addr <a>`,
//!   `id <id>`, then `shed <n> live <m>` per hint and `closed <k>` when done. It exits
//!   on stdin EOF or SIGTERM; the harness stops it by PID;
//! - devices: a [`fleet::Swarm`] in this process, `SB_FLEET_DEVICES` (8,000) tasks of
//!   `switchboard_client::Device`, recording device-side who holds what.
//!
//! Rounds are heartbeat intervals. A row per round: held per backend (device side;
//! `*` draining, `x` dead), `max/mean` and `min/mean` over the live, non-draining
//! backends, the same from the registry's listing, the share of all connections that
//! moved (reconnected) in the round, `/servers` calls per second, the most reconnects
//! one backend got against the fair share, and the `shed` hints the backends printed.
//!
//! Scenarios (`SB_FLEET_SCENARIOS`, all by default), each bounded in time:
//! 1. `scale-out`: 4 backends, devices placed, then a 5th joins.
//! 2. `kill`: kill -9 one of 5; its devices reconnect.
//! 3. `evacuate`: drain one of 5 with `evacuate_per_sec` = `SB_FLEET_EVACUATE_PER_SEC`.
//! 4. `restart`: the registry killed (-9), then stopped (SIGTERM), each time kept down
//!    `SB_FLEET_DOWN_SECS` (3: one TTL, so every lease is at the edge of expiry when
//!    it is back) and started again on the same port and store while the fleet is
//!    balanced.
//!
//! Every GOAL is printed beside its figure with PASS or MISS; a miss does not fail the
//! run (an error does). Other knobs: `SB_FLEET_QUIET_ROUNDS` (10),
//! `SB_FLEET_MAX_ROUNDS` (60).
//!
//! This file holds the knobs, the scenarios and their goals; `fleet/rig.rs` the
//! processes and the rounds; `tests/common/fleet.rs` (shared with
//! `tests/rebalance.rs`) the backend and the device swarm.

#[path = "../tests/common/fleet.rs"]
mod fleet;
#[path = "fleet/rig.rs"]
mod rig;
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use fleet::{Event, EventKind};
use rig::{Fleet, Round};
use support::knobs;
use support::report::loadavg;

const SERVICE: &str = "fleet";
/// Set to `backend` in a backend process.
const ROLE: &str = "SB_FLEET_ROLE";
/// The registry's URL, for a backend process.
const REGISTRY: &str = "SB_FLEET_REGISTRY";
/// Lease TTL of the backends: a heartbeat (a round) every `TTL_SECS / 3` = 1 s.
const TTL_SECS: u32 = 3;
/// The registry's default tolerance around the mean.
const TOLERANCE: f64 = 0.10;
/// A balanced fleet may have this share of its devices between two connections.
const UNPLACED_SHARE: f64 = 0.01;
/// Seconds with fewer reconnects are not judged for the reconnect-storm goal.
const STORM_MIN: usize = 20;
/// Longest wait for a process to start, for a swarm to be placed, for a stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PLACE_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors of the harness beyond one per device.
const FD_RESERVE: u64 = 1_000;
/// Rounds a fresh fleet may take to settle before a scenario starts.
const SETTLE_ROUNDS: u32 = 30;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("backend") {
        rig::backend_process();
    } else if knobs::asked_for("fleet") {
        knobs::block_on("fleet", 2, run(Knobs::from_env()));
    }
}

// ---------------------------------------------------------------------------------
// Knobs, header, goals
// ---------------------------------------------------------------------------------

const SCENARIOS: [&str; 4] = ["scale-out", "kill", "evacuate", "restart"];

struct Knobs {
    devices: usize,
    /// One round: the backends' heartbeat interval.
    round: Duration,
    jitter_ms: u64,
    shed_ratio: f64,
    evacuate_per_sec: u32,
    quiet_rounds: u32,
    max_rounds: u32,
    /// How long the registry stays down in `restart`.
    down: Duration,
    scenarios: Vec<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let round = Duration::from_secs(u64::from(TTL_SECS / 3).max(1));
        let shed_ratio = std::env::var("SB_FLEET_SHED_RATIO")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(0.01);
        Knobs {
            devices: knobs::count("SB_FLEET_DEVICES", 8_000, 10, 100_000),
            round,
            jitter_ms: u64::try_from(round.as_millis()).unwrap_or(1_000),
            shed_ratio,
            evacuate_per_sec: knobs::num("SB_FLEET_EVACUATE_PER_SEC", 200, 1, 100_000) as u32,
            quiet_rounds: knobs::num("SB_FLEET_QUIET_ROUNDS", 10, 1, 100) as u32,
            max_rounds: knobs::num("SB_FLEET_MAX_ROUNDS", 60, 10, 600) as u32,
            down: Duration::from_secs(knobs::num("SB_FLEET_DOWN_SECS", 3, 0, 60)),
            scenarios: knobs::list("SB_FLEET_SCENARIOS")
                .unwrap_or_else(|| SCENARIOS.map(String::from).to_vec()),
        }
    }
}

fn header(k: &Knobs) {
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let nofile = switchboard::rlimit::raise().map_or(0, |n| n.now);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "fleet bench: commit {commit}; {cpus} cpus; loadavg {}",
        loadavg()
    );
    println!(
        "config: {} devices; ttl_secs {TTL_SECS} (heartbeat = round {:?}); reconnect_jitter_ms {}; \
         shed_max_ratio {} (SB_FLEET_SHED_RATIO); tolerance {TOLERANCE} (registry default); \
         evacuate_per_sec {}; quiet rounds {}; max rounds {}; registry down {:?} in restart; \
         RLIMIT_NOFILE {nofile}; scenarios {}",
        k.devices,
        k.round,
        k.jitter_ms,
        k.shed_ratio,
        k.evacuate_per_sec,
        k.quiet_rounds,
        k.max_rounds,
        k.down,
        k.scenarios.join(",")
    );
    println!(
        "columns: held = devices per backend by the devices' own records (* draining, x dead); \
         max,min/mean = spread over the up backends (device side); registry = the same from \
         GET /v1/services/{SERVICE}/instances; moved = share of all devices that reconnected \
         in the round; /srv/s = /servers calls per second; rc max = most reconnects reaching \
         one backend; ×fair = that / (reconnects / up backends), - under {STORM_MIN}; \
         shed = sum of the hints the backends printed"
    );
}

/// A goal beside its figure.
struct Goal {
    scenario: &'static str,
    text: String,
    figure: String,
    pass: bool,
}

impl Goal {
    fn line(&self) -> String {
        let verdict = if self.pass { "PASS" } else { "MISS" };
        let (scenario, text, figure) = (self.scenario, &self.text, &self.figure);
        format!("GOAL {scenario:<10} {text:<58} {figure:<44} {verdict}")
    }
}

/// The goals of one scenario, printed as they are judged.
struct Goals<'g> {
    scenario: &'static str,
    all: &'g mut Vec<Goal>,
}

impl Goals<'_> {
    fn check(&mut self, text: impl Into<String>, figure: String, pass: bool) {
        let (scenario, text) = (self.scenario, text.into());
        let goal = Goal {
            scenario,
            text,
            figure,
            pass,
        };
        println!("{}", goal.line());
        self.all.push(goal);
    }
}

async fn run(k: Knobs) -> anyhow::Result<()> {
    header(&k);
    // The devices' sockets, the registry client's pool and the pipes, in this process.
    let nofile = switchboard::rlimit::raise().map_or(0, |n| n.now);
    if k.devices as u64 + FD_RESERVE > nofile {
        bail!(
            "{} devices need more than RLIMIT_NOFILE {nofile} allows (ulimit -Hn)",
            k.devices
        );
    }
    if let Some(bad) = k
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        bail!("unknown scenario {bad:?}; known: {}", SCENARIOS.join(","));
    }
    let mut goals = Vec::new();
    let mut failed = Vec::new();
    for name in &k.scenarios {
        println!("\n== {name} ==");
        match scenario(&k, name, &mut goals).await {
            Ok(()) => {}
            Err(err) => {
                println!("{name}: FAILED: {err:#}");
                failed.push(name.clone());
            }
        }
    }
    println!("\n== summary (loadavg {}) ==", loadavg());
    for g in &goals {
        println!("{}", g.line());
    }
    let met = goals.iter().filter(|g| g.pass).count();
    println!("{met} of {} goals met", goals.len());
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs one scenario on a fleet of its own, within a deadline; the fleet is stopped
/// by PID whatever happened.
async fn scenario(k: &Knobs, name: &str, all: &mut Vec<Goal>) -> anyhow::Result<()> {
    let scenario = SCENARIOS
        .into_iter()
        .find(|s| *s == name)
        .context("unknown")?;
    let mut goals = Goals { scenario, all };
    let backends = if scenario == "scale-out" { 4 } else { 5 };
    let mut fleet = Fleet::start(k, backends).await?;
    let deadline = PLACE_TIMEOUT + k.round * (SETTLE_ROUNDS + 3 * k.max_rounds);
    let outcome = tokio::time::timeout(deadline, async {
        match scenario {
            "scale-out" => scale_out(&mut fleet, &mut goals).await,
            "kill" => kill(&mut fleet, &mut goals).await,
            "evacuate" => evacuate(&mut fleet, &mut goals).await,
            _ => restart(&mut fleet, &mut goals).await,
        }
    })
    .await;
    fleet.stop().await;
    outcome.map_err(|_| anyhow!("{name} did not finish within {deadline:?}"))?
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

/// 4 → 5 backends.
async fn scale_out(f: &mut Fleet<'_>, goals: &mut Goals<'_>) -> anyhow::Result<()> {
    let k = f.k;
    f.settle().await?;
    f.add_backend().await?;
    let counts = f.up_counts();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    let surplus: f64 = counts.iter().map(|&c| (c as f64 - mean).max(0.0)).sum();
    println!("the 5th backend registered; surplus above the mean {surplus:.0}");
    let balanced = |r: &Round| r.balanced(k.devices);
    let rounds = f
        .observe(k.max_rounds, after_first(k.quiet_rounds, balanced))
        .await;
    let converged = rounds.iter().find(|r| balanced(r)).map(|r| r.n);
    let moved = totals(&rounds, converged, surplus);
    let ratio = rounds.iter().map(|r| r.shed_ratio).fold(0.0, f64::max);
    let after: Vec<&Round> = rounds
        .iter()
        .filter(|r| converged.is_some_and(|c| r.n > c))
        .collect();
    let loud = after.iter().filter(|r| r.shed > 0).count();
    let quiet = converged.is_some() && loud == 0 && after.len() as u32 >= k.quiet_rounds;

    let text = "within ±10 % of the mean in ≤ 10 rounds";
    goals.check(
        text,
        rounds_figure(converged, rounds.len()),
        converged.is_some_and(|c| c <= 10),
    );
    let figure = format!("max {:.2} % (one backend, one round)", ratio * 100.0);
    goals.check(
        "≤ 1 % of a server's connections shed per round",
        figure,
        ratio <= 0.01 + 1e-9,
    );
    let figure = format!(
        "{moved} / {surplus:.0} = {:.2}",
        moved as f64 / surplus.max(1.0)
    );
    goals.check(
        "moved ≤ 1.2 × the surplus above the mean",
        figure,
        moved as f64 <= 1.2 * surplus,
    );
    let text = format!("no shed in the {} rounds after converging", k.quiet_rounds);
    goals.check(
        text,
        format!("{loud} of {} rounds with shed > 0", after.len()),
        quiet,
    );
    Ok(())
}

/// kill -9 one of 5.
async fn kill(f: &mut Fleet<'_>, goals: &mut Goals<'_>) -> anyhow::Result<()> {
    let k = f.k;
    f.settle().await?;
    let victim = f.backends.len() - 1;
    let held = f.held_by(victim);
    let killed_at = Instant::now();
    f.backends[victim].kill();
    let pid = f.backends[victim].pid;
    println!(
        "killed backend {} (pid {pid}), which held {held} devices",
        victim + 1
    );
    let balanced = |r: &Round| r.balanced(k.devices);
    let rounds = f.observe(k.max_rounds, after_first(5, balanced)).await;
    let converged = rounds.iter().find(|r| balanced(r)).map(|r| r.n);
    totals(&rounds, converged, held as f64);
    let events: Vec<&Event> = rounds.iter().flat_map(|r| &r.events).collect();
    let (worst, judged, ignored) = storm(&events, killed_at, f.up_count());

    let figure = rounds_figure(converged, rounds.len());
    goals.check(
        "survivors within ±10 % of the mean, all placed",
        figure,
        converged.is_some(),
    );
    let figure = format!("max {worst:.2} × ({judged} s judged, {ignored} s < {STORM_MIN} ignored)");
    let text = "≤ 2 × fair share of reconnects per backend per second";
    goals.check(text, figure, judged > 0 && worst <= 2.0);
    Ok(())
}

/// A paced evacuation of one of 5.
async fn evacuate(f: &mut Fleet<'_>, goals: &mut Goals<'_>) -> anyhow::Result<()> {
    let k = f.k;
    f.settle().await?;
    let victim = f.backends.len() - 1;
    let port = f.backends[victim].addr.port();
    let held = f.held_by(victim);
    let rate = k.evacuate_per_sec;
    f.drain(victim, rate).await?;
    println!(
        "drained backend {} holding {held} with evacuate_per_sec {rate}",
        victim + 1
    );
    let bound = k.max_rounds.max(2 * held as u32 / rate + 20);
    let spread_out = |r: &Round| r.held_on(port) == Some(0) && r.balanced(k.devices);
    let rounds = f.observe(bound, after_first(3, spread_out)).await;
    let converged = rounds.iter().find(|r| spread_out(r)).map(|r| r.n);
    totals(&rounds, converged, held as f64);
    // Measured device-side, from the first close to the last.
    let closes: Vec<Instant> = rounds
        .iter()
        .flat_map(|r| &r.events)
        .filter(|e| e.port == port && e.kind == EventKind::Lost)
        .map(|e| e.at)
        .collect();
    let (first, last) = (closes.first(), closes.last());
    let secs = first
        .zip(last)
        .map_or(0.0, |(a, b)| b.duration_since(*a).as_secs_f64());
    let seen = if secs > 0.0 {
        closes.len() as f64 / secs
    } else {
        0.0
    };

    let r = f64::from(rate);
    let figure = format!("{seen:.0}/s ({} closes in {secs:.1} s)", closes.len());
    goals.check(
        format!("empties at {rate} ± 10 % per second"),
        figure,
        (seen - r).abs() <= 0.1 * r,
    );
    let figure = rounds_figure(converged, rounds.len());
    goals.check(
        "its devices spread over the others within ±10 %",
        figure,
        converged.is_some(),
    );
    Ok(())
}

/// The registry restarted on the same port and store, by kill -9 and by SIGTERM.
async fn restart(f: &mut Fleet<'_>, goals: &mut Goals<'_>) -> anyhow::Result<()> {
    let k = f.k;
    for signal in ["KILL", "TERM"] {
        f.settle().await?;
        let stopped = Instant::now();
        f.stop_registry(signal)?;
        tokio::time::sleep(k.down).await;
        f.start_registry()?;
        println!(
            "registry stopped by SIG{signal}, back after {:.2?}",
            stopped.elapsed()
        );
        // 10 rounds from its return; the first also holds what happened while it was down.
        let rounds = f.observe(10, |_| false).await;
        let converged = rounds.iter().find(|r| r.balanced(k.devices)).map(|r| r.n);
        let moved = totals(&rounds, converged, 0.0);
        let share = moved as f64 / k.devices as f64;
        let figure = format!("{moved} moved ({:.2} %)", share * 100.0);
        goals.check(
            format!("SIG{signal}: < 1 % moved in the 10 rounds after"),
            figure,
            share < 0.01,
        );
    }
    Ok(())
}

/// Done `extra` rounds after the first round that is `ok`.
fn after_first(extra: u32, ok: impl Fn(&Round) -> bool) -> impl FnMut(&Round) -> bool {
    let mut first = None;
    move |r| {
        if first.is_none() && ok(r) {
            first = Some(r.n);
        }
        first.is_some_and(|c| r.n >= c + extra)
    }
}

fn rounds_figure(converged: Option<u32>, observed: usize) -> String {
    converged.map_or_else(
        || format!("not converged in {observed} rounds"),
        |c| format!("{c} rounds"),
    )
}

/// The worst `max reconnects to one backend / (reconnects / backends)` over the
/// seconds since `from` with at least [`STORM_MIN`] reconnects; seconds judged and
/// ignored.
fn storm(events: &[&Event], from: Instant, backends: usize) -> (f64, usize, usize) {
    let mut seconds: BTreeMap<u64, BTreeMap<u16, usize>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == EventKind::Connected { first: false })
    {
        let second = e.at.saturating_duration_since(from).as_secs();
        *seconds
            .entry(second)
            .or_default()
            .entry(e.port)
            .or_default() += 1;
    }
    let (mut worst, mut judged, mut ignored) = (0.0f64, 0, 0);
    for per_port in seconds.values() {
        let total: usize = per_port.values().sum();
        if total < STORM_MIN {
            ignored += 1;
            continue;
        }
        judged += 1;
        let max = per_port.values().copied().max().unwrap_or(0);
        worst = worst.max(max as f64 / (total as f64 / backends.max(1) as f64));
    }
    (worst, judged, ignored)
}

/// Prints the scenario's totals; the connections moved.
fn totals(rounds: &[Round], converged: Option<u32>, minimum: f64) -> usize {
    let moved: usize = rounds.iter().map(Round::moved).sum();
    let converged = rounds_figure(converged, rounds.len());
    println!("totals: converged: {converged}; moved {moved} in all, minimum needed {minimum:.0}");
    moved
}
