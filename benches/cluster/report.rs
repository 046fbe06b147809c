//! The printed report of a run: the cluster's figures, the single-node baseline's, and
//! the goals beside them. Prints only; measures nothing.

use super::{
    CPU_GOAL_RATIO, HEARTBEAT_EVERY, LATE, PROBE_POLL, PROBE_TIMEOUT, Report, SAMPLE_EVERY,
    SERIES_EVERY, SERVICE, TTL_SECS,
};
use crate::support::report::join;

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / 1000.0))
}

/// The report of one phase (the cluster, or the baseline).
pub fn print_report(r: &Report) {
    let w = r.window_secs;
    println!();
    println!(
        "== {}: {} instances (ttl {TTL_SECS} s, heartbeat every {} s from registration on, \
         round-robin over nodes), window {w:.1} s, {} cores ==",
        r.phase.label,
        r.registered,
        HEARTBEAT_EVERY.as_secs(),
        r.cores
    );
    println!(
        "registration: {} ok, {} failed in {:.1} s ({:.0}/s){}; all nodes listed all {}",
        r.registered,
        r.register_failures,
        r.register_secs,
        r.registered as f64 / r.register_secs.max(1e-9),
        r.register_first_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" first error: {e}")),
        r.converge_secs.map_or_else(
            || "NEVER (within 60 s)".to_owned(),
            |s| format!("{s:.2} s after the last registration")
        ),
    );
    println!();
    println!(
        "{:<4} {:>7} {:>21} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14}",
        "node",
        "pid",
        "http",
        "hb/s",
        "hb",
        "non200",
        "io err",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU %",
        "µs/hb",
        "RSS0 MiB",
        "RSS MiB",
        "live/expired",
    );
    let mut total_answered = 0;
    let mut total_cpu = 0.0;
    for (i, n) in r.nodes.iter().enumerate() {
        let mut lat = n.window.tally.latencies.clone();
        lat.sort_unstable();
        let answered = n.window.tally.answered;
        total_answered += answered;
        total_cpu += n.cpu_pct;
        let view = n
            .end_view
            .as_ref()
            .map_or_else(|| "?".to_owned(), |v| format!("{}/{}", v.live, v.expired));
        println!(
            "{:<4} {:>7} {:>21} {:>8.0} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8.1} {:>8} {:>9.1} {:>9.1} {:>14}",
            i,
            n.pid,
            n.addr.to_string(),
            answered as f64 / w,
            answered,
            n.window.tally.non_ok(),
            n.window.tally.errors,
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            ms(lat.last().copied()),
            n.cpu_pct,
            n.us_per_beat
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            n.rss_idle_kib as f64 / 1024.0,
            n.rss_end_kib as f64 / 1024.0,
            view,
        );
    }
    println!(
        "all  {:>7} {:>21} {:>8.0} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8.1} {:>8}",
        "",
        "",
        total_answered as f64 / w,
        total_answered,
        r.nodes.iter().map(|n| n.window.tally.non_ok()).sum::<u64>(),
        r.nodes.iter().map(|n| n.window.tally.errors).sum::<u64>(),
        "",
        "",
        "",
        total_cpu,
        if total_answered > 0 {
            format!("{:.0}", total_cpu / 100.0 * w * 1e6 / total_answered as f64)
        } else {
            "-".to_owned()
        },
    );
    println!(
        "  (hb: heartbeats answered in the window, planned {}; CPU % of one core over the \
         window; RSS0 before registration, RSS at window end; live/expired of `{SERVICE}` \
         after the window)",
        r.beats_planned_window
    );
    println!(
        "  heartbeats/s answered in the window: {:.0} with 200, {:.0} with 404 (all nodes)",
        r.nodes.iter().map(|n| n.window.status(200)).sum::<u64>() as f64 / w,
        r.nodes.iter().map(|n| n.window.status(404)).sum::<u64>() as f64 / w,
    );
    print_pg(r);
    print_liveness(r);
}

/// PostgreSQL's figures over the window, when the phase ran on it.
fn print_pg(r: &Report) {
    let (Some(p), Some(db)) = (&r.pg, &r.phase.pg_db) else {
        return;
    };
    let w = r.window_secs;
    println!();
    let pg = &p.win;
    println!("PostgreSQL (database {db}, over the window):");
    println!(
        "  transactions/s      {:>10.1}   ({} commits, {} rollbacks)",
        (pg.commits + pg.rollbacks) as f64 / w,
        pg.commits,
        pg.rollbacks
    );
    println!(
        "  transactions/s per {} s slice: {}",
        SERIES_EVERY.as_secs(),
        join(&p.tps_series, " ", |t| format!("{t:.0}"))
    );
    println!(
        "  rows updated/s      {:>10.0}   (inserted {}, returned {})",
        pg.tup_updated as f64 / w,
        pg.tup_inserted,
        pg.tup_returned
    );
    println!(
        "  WAL written         {:>10.1}   KiB/s (whole server)",
        pg.wal_bytes as f64 / 1024.0 / w
    );
    println!(
        "  NOTIFY queue        {:>10.0}   KiB unread at the window's start, {:.0} KiB at its end \
         (pg_notification_queue_usage() x 8 GiB, whole server)",
        p.notify_queue_start * 8.0 * 1024.0 * 1024.0,
        pg.notify_queue * 8.0 * 1024.0 * 1024.0
    );
    match p.cpu_pct {
        Some(cpu) => println!(
            "  backends CPU        {cpu:>10.1}   % of one core ({} backends of the database)",
            p.backends
        ),
        None => println!("  backends CPU                 -   (no backend PIDs found)"),
    }
    if let Some((b, a)) = p.table {
        let upd = a.updates - b.updates;
        let hot = a.hot_updates - b.hot_updates;
        println!(
            "  instances table     {:>10.1}   seq scans/s reading {:.0} rows/s, {:.1} index scans/s",
            (a.seq_scans - b.seq_scans) as f64 / w,
            (a.seq_rows - b.seq_rows) as f64 / w,
            (a.idx_scans - b.idx_scans) as f64 / w,
        );
        let ok: u64 = r.nodes.iter().map(|n| n.window.status(200)).sum();
        println!(
            "                      {:>10.0}   row updates/s, {:.3} rows updated per heartbeat answered 200 \
             ({upd} updates / {ok} heartbeats)",
            upd as f64 / w,
            if ok > 0 { upd as f64 / ok as f64 } else { 0.0 },
        );
        println!(
            "                      {:>10.1}   % HOT (n_tup_hot_upd {hot} of n_tup_upd {upd} in the window)",
            if upd > 0 {
                hot as f64 * 100.0 / upd as f64
            } else {
                0.0
            },
        );
        println!(
            "                      dead rows (n_dead_tup) {} at the window's start, {} at its end; \
             live rows {} / {}; {:.1} / {:.1} MiB with indexes; {} autovacuum runs in the window, \
             {} since creation",
            b.dead,
            a.dead,
            b.live,
            a.live,
            b.total_bytes as f64 / 1024.0 / 1024.0,
            a.total_bytes as f64 / 1024.0 / 1024.0,
            a.autovacuums - b.autovacuums,
            a.autovacuums
        );
    }
    if let Some(a) = p.db_ages {
        println!(
            "  heartbeat age in db {:>10.2}   s max over {} rows; {} older than {} s, {} older than the {TTL_SECS} s ttl",
            a.max_secs,
            a.rows,
            a.over_heartbeat,
            HEARTBEAT_EVERY.as_secs() + 1,
            a.over_ttl
        );
    }
}

/// Propagation, liveness during the window, the load generator and the nodes' logs.
fn print_liveness(r: &Report) {
    println!();
    let p = &r.probes;
    let mut d = p.delays_us.clone();
    d.sort_unstable();
    println!(
        "propagation (register on node i, listed by GET /servers on node i+1, polled every {} ms):",
        PROBE_POLL.as_millis()
    );
    println!(
        "  {} planned, {} registered, {} seen, {} not seen within {} s, {} failed; \
         p50 {} ms, p99 {} ms, max {} ms{}",
        p.planned,
        p.registered,
        p.seen,
        p.timed_out,
        PROBE_TIMEOUT.as_secs(),
        p.failed,
        ms(quantile(&d, 0.5)),
        ms(quantile(&d, 0.99)),
        ms(d.last().copied()),
        p.first_error
            .as_ref()
            .map_or_else(String::new, |e| format!("; first error: {e}"))
    );
    println!();
    println!(
        "liveness during the window (GET /v1/services every {} s):",
        SAMPLE_EVERY.as_secs()
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let s = &n.samples;
        let end = n.end_view.as_ref();
        println!(
            "  node {i}: {} samples ({} failed), min live {}, max expired {}, self-preservation {}; \
             after: live {}, expired {}, draining {}, probes live {}",
            s.taken,
            s.failed,
            s.min_live.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            s.max_expired,
            if s.self_preservation || end.is_some_and(|v| v.self_preservation) {
                "SEEN"
            } else {
                "no"
            },
            end.map_or_else(|| "?".to_owned(), |v| v.live.to_string()),
            end.map_or_else(|| "?".to_owned(), |v| v.expired.to_string()),
            end.map_or_else(|| "?".to_owned(), |v| v.draining.to_string()),
            n.end_probe_live
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        );
    }
    println!();
    println!(
        "load generator: {:.1} % of one core; heartbeats sent over {} s late: {}, latest {:.0} ms; \
         machine busy {:.1} % of {} cores",
        r.loadgen_cpu_pct,
        LATE.as_secs(),
        r.late,
        r.max_lag.as_secs_f64() * 1000.0,
        r.machine_busy_pct,
        r.cores
    );
    println!(
        "other processes by CPU in the window (% of one core): {}",
        join(&r.top_processes, ", ", |(name, p)| format!("{name} {p:.1}"))
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let t = &n.total;
        let mut odd = Vec::new();
        if !t.tally.statuses.is_empty() {
            odd.push(format!("non-200 over the whole run {:?}", t.tally.statuses));
        }
        if t.tally.errors > 0 {
            odd.push(format!(
                "{} IO errors ({})",
                t.tally.errors,
                t.tally.first_error.as_deref().unwrap_or("?")
            ));
        }
        if n.log.warnings + n.log.errors > 0 {
            odd.push(format!(
                "log: {} warnings, {} errors ({} of them after the load stopped), e.g. {:?}",
                n.log.warnings, n.log.errors, n.log.after_load, n.log.lines
            ));
        }
        println!(
            "node {i}: {}{}",
            n.stop_note,
            if odd.is_empty() {
                String::new()
            } else {
                format!("; {}", odd.join("; "))
            }
        );
    }
}

/// Each node's CPU per heartbeat beside the baseline's, with the ratio and the goal.
pub fn print_comparison(cluster: &Report, baseline: Option<&Report>) {
    println!();
    println!(
        "== CPU per heartbeat: {} against the baseline ==",
        cluster.phase.label
    );
    let Some(base) = baseline else {
        println!("  no baseline run (SB_BENCH_BASELINE=none)");
        return;
    };
    let base_us = base.nodes.first().and_then(|n| n.us_per_beat);
    println!(
        "  baseline ({}): {} µs per heartbeat, {:.0} heartbeats/s answered 200 ({:.0} with 404)",
        base.phase.label,
        base_us.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
        base.nodes.iter().map(|n| n.window.status(200)).sum::<u64>() as f64 / base.window_secs,
        base.nodes.iter().map(|n| n.window.status(404)).sum::<u64>() as f64 / base.window_secs,
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        let ratio = n.us_per_beat.zip(base_us).map(|(c, b)| c / b.max(1e-9));
        println!(
            "  node {i}: {} µs per heartbeat, {} x the baseline (goal <= {CPU_GOAL_RATIO} x: {})",
            n.us_per_beat
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            match ratio {
                Some(r) if r <= CPU_GOAL_RATIO => "met",
                Some(_) => "MISSED",
                None => "-",
            }
        );
    }
}
