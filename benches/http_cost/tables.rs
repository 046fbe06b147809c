//! The report: a line per phase as it ends, then a table per phase kind with the
//! ratios to nginx and each goal beside its figure (met or MISSED, never asserted), the
//! scale phase, a list of the goals, answers and errors, and the command.
//!
//! Owns the goals' thresholds; measures nothing.

use std::time::Duration;

use crate::instances::Shape;
use crate::scale::{self, LATE};
use crate::support::report::{Tally, join, loadavg};
use crate::wrk::{self, Measured};
use crate::{Config, Results, ScaleRun, ShapeRun};

/// `/healthz` CPU per request, at most this times nginx's.
const HEALTHZ_CPU_X: f64 = 1.2;
/// Heartbeat and `/servers` CPU per request at 1k instances, at most this times nginx's.
const AT_1K_CPU_X: f64 = 1.5;
/// The kept-alive `/servers` rate, at least this times nginx's.
const SERVERS_RATE_X: f64 = 0.6;
/// Heartbeat CPU at 100k uneven, at most this times that at 1k uneven.
const GROWTH_X: f64 = 1.2;
/// Heartbeats per second at 100k, at least.
const BEATS_PER_SEC: f64 = 60_000.0;
/// Scale phase: `/servers` p99 below this (µs), RSS per instance at most this (KiB).
const SCALE_P99_US: f64 = 5_000.0;
const KIB_PER_INSTANCE: f64 = 1.0;
/// Other processes above this share of a core make rates and latencies noisy.
const NOISY_PCT: f64 = 25.0;

/// `1k`, `10k`, `100k`, or the number.
pub fn size_name(n: usize) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// `v` rounded, with thousands separators.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.is_finite() => format!("{v:.1}"),
        _ => "-".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// One phase's line, printed as it ends.
pub fn print_phase(label: &str, m: &Measured) {
    println!(
        "  {label:<26} {:>9} req/s  p50 {:>7} µs  p99 {:>7} µs  server {:>6} µs CPU/req  \
         (wrk {} µs/req; others {:.0}% of a core; {} answers, {} errors)",
        thousands(m.rps()),
        num(Some(m.p50_us)),
        num(Some(m.p99_us)),
        num(m.cpu_us()),
        num(m.wrk_us()),
        m.other_pct(),
        thousands(m.requests as f64),
        m.error_count()
    );
}

/// The goals judged so far, for the closing list.
#[derive(Default)]
struct Goals(Vec<String>);

impl Goals {
    /// `name` judged on `figure` by `ok`: the table's cell, also kept for the list.
    fn judge(
        &mut self,
        at: &str,
        name: &str,
        figure: Option<f64>,
        shown: impl Fn(f64) -> String,
        ok: impl Fn(f64) -> bool,
    ) -> String {
        let cell = match figure {
            Some(v) if v.is_finite() => {
                let verdict = if ok(v) { "met" } else { "MISSED" };
                format!("{name} ({}): {verdict}", shown(v))
            }
            _ => format!("{name}: not measured"),
        };
        self.0.push(format!("{at}: {cell}"));
        cell
    }
}

const HEAD: &str = "phase                       req/s   p50 µs   p99 µs  µs CPU/req  CPU ×nginx  rate ×nginx  wrk µs/req  others %  goal";

fn row(label: &str, m: &Measured, nginx: Option<&Measured>, goal: &str) -> String {
    let cpu_x = ratio(m.cpu_us(), nginx.and_then(Measured::cpu_us));
    let rate_x = ratio(Some(m.rps()), nginx.map(Measured::rps));
    format!(
        "{label:<22} {:>10} {:>8} {:>8} {:>11} {:>11} {:>12} {:>11} {:>9.0}  {goal}",
        thousands(m.rps()),
        num(Some(m.p50_us)),
        num(Some(m.p99_us)),
        num(m.cpu_us()),
        x(cpu_x),
        x(rate_x),
        num(m.wrk_us()),
        m.other_pct()
    )
}

fn find(results: &Results, n: usize, shape: Shape) -> Option<&ShapeRun> {
    let size = results.sizes.iter().find(|s| s.n == n)?;
    size.shapes.iter().find(|s| s.shape == shape)
}

/// The whole report.
pub fn print_report(cfg: &Config, r: &Results, took: Duration) {
    let mut goals = Goals::default();
    let nginx = r.nginx.as_ref();
    let cpu_x = |m: &Measured| ratio(m.cpu_us(), nginx.and_then(Measured::cpu_us));
    let rate_x = |m: &Measured| ratio(Some(m.rps()), nginx.map(Measured::rps));
    let times = |v: f64| format!("{v:.2}x");

    println!("\n==================== http_cost bench results ====================");
    println!(
        "wrk -t{} -c{} -d{}s --latency, the same for every server; µs CPU/req = server utime+stime \
         over the phase plus {:?} settle / requests wrk counted; ratios against nginx's return 200 \
         of this run; others % = other processes' CPU (other builds) in % of one core",
        wrk::THREADS,
        wrk::CONNS,
        cfg.secs,
        wrk::SETTLE
    );
    if nginx.is_none() {
        println!("nginx was not measured: no ratios, and no goal against it can be judged");
    }

    println!("\n-- baseline and /healthz --\n{HEAD}");
    if let Some(m) = nginx {
        println!("{}", row("nginx return 200", m, nginx, ""));
    }
    if let Some(m) = &r.healthz {
        let goal = goals.judge(
            "/healthz",
            &format!("CPU ≤ {HEALTHZ_CPU_X}x nginx"),
            cpu_x(m),
            times,
            |v| v <= HEALTHZ_CPU_X,
        );
        println!("{}", row("switchboard /healthz", m, nginx, &goal));
    }

    println!(
        "\n-- registration and memory (RSS of the idle empty server: {} KiB) --",
        r.rss_idle_kib
    );
    println!("instances  registered  took s  per s  RSS KiB  KiB/instance  idle CPU %");
    for s in &r.sizes {
        println!(
            "{:>9} {:>11} {:>7.1} {:>6.0} {:>8} {:>13.2} {:>11.1}",
            thousands(s.n as f64),
            thousands(s.added as f64),
            s.register_took.as_secs_f64(),
            s.added as f64 / s.register_took.as_secs_f64().max(1e-9),
            s.rss_kib,
            (s.rss_kib as f64 - r.rss_idle_kib as f64) / s.n as f64,
            s.idle_pct
        );
    }

    let first_1k = find(r, 1_000, Shape::Uneven).and_then(|s| s.beats.cpu_us());
    for (title, beats) in [
        ("heartbeat", true),
        ("/servers?service=bench&limit=5", false),
    ] {
        println!("\n-- {title} --\n{HEAD}");
        for (n, s) in r
            .sizes
            .iter()
            .flat_map(|z| z.shapes.iter().map(|s| (z.n, s)))
        {
            let label = format!("{} {}", size_name(n), s.shape.name());
            let at = format!("{label} {}", if beats { "heartbeat" } else { "/servers" });
            let m = if beats { &s.beats } else { &s.servers };
            let mut cells = Vec::new();
            if n == 1_000 {
                cells.push(goals.judge(
                    &at,
                    &format!("CPU ≤ {AT_1K_CPU_X}x nginx"),
                    cpu_x(m),
                    times,
                    |v| v <= AT_1K_CPU_X,
                ));
            }
            if !beats {
                cells.push(goals.judge(
                    &at,
                    &format!("rate ≥ {SERVERS_RATE_X}x nginx"),
                    rate_x(m),
                    times,
                    |v| v >= SERVERS_RATE_X,
                ));
            }
            if beats && n == 100_000 && s.shape == Shape::Uneven {
                cells.push(goals.judge(
                    &at,
                    &format!("CPU ≤ {GROWTH_X}x 1k uneven"),
                    ratio(m.cpu_us(), first_1k),
                    times,
                    |v| v <= GROWTH_X,
                ));
            }
            if beats && n == 100_000 {
                cells.push(
                    goals.judge(&at, "≥ 60,000/s", Some(m.rps()), thousands, |v| {
                        v >= BEATS_PER_SEC
                    }),
                );
            }
            println!("{}", row(&label, m, nginx, &cells.join("; ")));
        }
    }
    for (n, what) in [(1_000, "1k"), (100_000, "100k")] {
        if find(r, n, Shape::Uneven).is_none() {
            goals.0.push(format!(
                "goals at {what}: not measured (no {n} in SB_BENCH_SIZES, or no wrk)"
            ));
        }
    }

    if let Some(s) = &r.scale {
        print_scale(s, r.rss_idle_kib, &mut goals);
    }

    println!("\n-- goals (reported, not asserted) --");
    for line in &goals.0 {
        println!("  {line}");
    }

    print_errors(r);
    let noisiest = r
        .sizes
        .iter()
        .flat_map(|s| &s.shapes)
        .flat_map(|s| [&s.beats, &s.servers])
        .chain(r.nginx.iter())
        .chain(r.healthz.iter())
        .map(Measured::other_pct)
        .fold(0.0, f64::max);
    if noisiest > NOISY_PCT {
        println!(
            "\nWARNING: other processes used up to {noisiest:.0}% of a core during a phase: \
             rates and latencies are disturbed (CPU per request much less so)"
        );
    }
    println!("load average at the end: {}", loadavg());
    println!("whole run: {:.0} s", took.as_secs_f64());

    println!("\nreproduce (from the repository root):");
    let scale = cfg.scale.as_ref();
    println!(
        "  SB_BENCH_SECS={} SB_BENCH_SIZES={} SB_BENCH_REGISTER_CONNS={} SB_BENCH_SCALE_SIZE={} \
         SB_BENCH_SCALE_BEATS={} SB_BENCH_SCALE_RATE={} SB_BENCH_SCALE_CONNS={} SB_BENCH_SCALE_READS={} \
         cargo bench --bench http_cost",
        cfg.secs,
        join(&cfg.sizes, ",", usize::to_string),
        cfg.register_conns,
        scale.map_or(0, |s| s.size),
        scale.map_or(0, |s| s.beats),
        scale.map_or(0, |s| s.rate),
        scale.map_or(0, |s| s.conns),
        scale.map_or(0, |s| s.reads_per_sec),
    );
}

fn print_scale(s: &ScaleRun, rss_idle_kib: u64, goals: &mut Goals) {
    let (c, m) = (&s.cfg, &s.result);
    let at = format!("scale {}", size_name(m.n));
    println!(
        "\n-- scale: {} instances (uneven), heartbeats paced at {}/s over {} connections, \
         /servers?limit=5 sampled {}/s on its own --",
        thousands(m.n as f64),
        thousands(c.rate as f64),
        c.conns,
        c.reads_per_sec
    );
    let pct = |part: u64, all: u64| part as f64 * 100.0 / all.max(1) as f64;
    println!(
        "heartbeats       {} answered 200 of {} sent ({} asked) in {:.1} s: {}/s (asked {}/s)",
        thousands(m.beats.ok as f64),
        thousands(m.sent as f64),
        thousands(c.beats as f64),
        m.elapsed.as_secs_f64(),
        thousands(m.beats_per_sec()),
        thousands(c.rate as f64)
    );
    println!(
        "  late sends      {} ({:.2}%) more than {LATE:?} after their slot; worst {:.1} ms",
        thousands(m.late as f64),
        pct(m.late, m.sent),
        m.worst_lag.as_secs_f64() * 1e3
    );
    println!(
        "  latency         p50 {} µs, p99 {} µs ({} sampled)",
        num(scale::percentile_us(&m.beats.latencies, 50)),
        num(scale::percentile_us(&m.beats.latencies, 99)),
        thousands(m.beats.latencies.len() as f64)
    );
    println!(
        "server CPU       {} µs per heartbeat (the /servers samples and the 1 s flush included), \
         {:.0}% of a core; others {:.0}% of a core",
        num(m.cpu_us()),
        m.server_pct(),
        m.other_pct()
    );
    let p99 = scale::percentile_us(&m.reads.latencies, 99);
    let goal = goals.judge(
        &at,
        "/servers p99 < 5 ms",
        p99,
        |v| format!("{v:.0} µs"),
        |v| v < SCALE_P99_US,
    );
    println!(
        "/servers         p50 {} µs, p99 {} µs, max {} µs ({} answered 200 of {}); {goal}",
        num(scale::percentile_us(&m.reads.latencies, 50)),
        num(p99),
        num(scale::percentile_us(&m.reads.latencies, 100)),
        thousands(m.reads.ok as f64),
        thousands(m.reads.answered as f64)
    );
    let per = |rss: u64| (rss as f64 - rss_idle_kib as f64) / m.n.max(1) as f64;
    let goal = goals.judge(
        &at,
        &format!("RSS ≤ {KIB_PER_INSTANCE} KiB/instance after the heartbeats"),
        Some(per(s.rss_after_kib)),
        |v| format!("{v:.2} KiB"),
        |v| v <= KIB_PER_INSTANCE,
    );
    println!(
        "RSS              idle empty {rss_idle_kib} KiB; after registration {} KiB = {:.2} KiB/instance; \
         after the heartbeats {} KiB = {:.2} KiB/instance; {goal}",
        s.rss_registered_kib,
        per(s.rss_registered_kib),
        s.rss_after_kib,
        per(s.rss_after_kib)
    );
}

fn tally_note(t: &Tally) -> String {
    let statuses = join(&t.statuses, " ", |(s, c)| format!("{s}x{c}"));
    let first = t
        .first_error
        .as_deref()
        .map(|e| format!(", first: {e}"))
        .unwrap_or_default();
    format!("non-200 [{statuses}], errors {}{first}", t.errors)
}

fn print_errors(r: &Results) {
    println!("\n-- answers and errors --");
    let wrk_errors = |m: &Measured| {
        if m.error_count() == 0 {
            return "none".to_owned();
        }
        join(m.errors.iter().filter(|(_, v)| **v > 0), " ", |(k, v)| {
            format!("{k} {v}")
        })
    };
    for (label, m) in r
        .nginx
        .iter()
        .map(|m| ("nginx", m))
        .chain(r.healthz.iter().map(|m| ("/healthz", m)))
    {
        println!("  {label:<24} wrk errors: {}", wrk_errors(m));
    }
    for s in &r.sizes {
        for t in &s.shapes {
            let label = format!("{} {}", size_name(s.n), t.shape.name());
            println!(
                "  {label:<24} load set in {:.1} s ({} failed); wrk errors: heartbeat {}; /servers {}",
                t.load_took.as_secs_f64(),
                t.load_failed,
                wrk_errors(&t.beats),
                wrk_errors(&t.servers)
            );
        }
    }
    if let Some(s) = &r.scale {
        println!("  scale heartbeats         {}", tally_note(&s.result.beats));
        println!("  scale /servers           {}", tally_note(&s.result.reads));
    }
    let first = r.register_error.as_deref().unwrap_or("none");
    println!(
        "  registrations failed: {} (first error: {first})",
        r.register_failed
    );
    println!(
        "  switchboard log: {} warnings, {} errors ({} after the load); {}",
        r.log.warnings, r.log.errors, r.log.after_load, r.stop_note
    );
    for line in &r.log.lines {
        println!("      | {line}");
    }
}
