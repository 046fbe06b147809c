//! The report: a table of one phase's rows by setup, the figures each phase leaves for
//! the goals (`Summary`), the goals judged met or MISSED (never asserted), and the
//! reference numbers of this machine.
//!
//! Must not measure: the phases fill it.

use std::fmt::Write as _;

use crate::proxy::Setup;

/// Published numbers for this machine on a quiet day (for comparison, not asserted).
pub const REFERENCE: &str = "\
reference (this machine, a quiet day): one-stream throughput nginx 0.66x direct, HAProxy 0.67x;
  connection rate nginx 0.81x direct at 48 us proxy CPU/conn;
  memory per idle connection nginx 9.6 KiB (33.7 KiB after 64 KiB burst), HAProxy 3.5 KiB (3.9 KiB).";

/// The result of `setup`, if it has one.
pub fn find<T>(results: &[(Setup, Option<T>)], setup: Setup) -> Option<&T> {
    results
        .iter()
        .find(|(s, _)| *s == setup)
        .and_then(|(_, r)| r.as_ref())
}

/// `v` with `decimals` decimals; `-` for none.
pub fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// One phase's table: a row per figure, a column per setup.
pub struct Table {
    title: String,
    columns: Vec<Setup>,
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    /// An empty table with a column for each of `columns`.
    pub fn new(title: &str, columns: &[Setup]) -> Self {
        Table {
            title: title.to_owned(),
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A row of `cell` for each column's result; `err` where a proxy has none.
    pub fn row<T>(
        &mut self,
        label: &str,
        results: &[(Setup, Option<T>)],
        cell: impl Fn(Option<&T>) -> String,
    ) {
        let cells = self
            .columns
            .iter()
            .map(|&c| {
                let found = results.iter().find(|(s, _)| *s == c);
                match found {
                    Some((_, Some(r))) => cell(Some(r)),
                    Some((_, None)) if c != Setup::Direct => "err".to_owned(),
                    _ => cell(None),
                }
            })
            .collect();
        self.rows.push((label.to_owned(), cells));
    }

    /// The title and the rows, aligned.
    pub fn render(&self) -> String {
        let label_w = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let col_w = 13;
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", self.title);
        let _ = write!(out, "{:label_w$}", "");
        for c in &self.columns {
            let _ = write!(out, " {:>col_w$}", c.name());
        }
        out.push('\n');
        for (label, cells) in &self.rows {
            let _ = write!(out, "{label:label_w$}");
            for cell in cells {
                let _ = write!(out, " {cell:>col_w$}");
            }
            out.push('\n');
        }
        out
    }
}

/// One result (or none) per setup.
pub type PerSetup<T> = Vec<(Setup, Option<T>)>;

/// What the goals need from each phase.
#[derive(Default)]
pub struct Summary {
    /// One-stream bits per second.
    pub one_stream: PerSetup<f64>,
    /// Eight-stream bits per second.
    pub eight_streams: PerSetup<f64>,
    /// Connections per second and proxy CPU µs per connection, client closing first.
    pub rate: PerSetup<(f64, Option<f64>)>,
    /// The same with the backend closing first.
    pub rate_backend_closes: PerSetup<(f64, Option<f64>)>,
    /// KiB per connection idle and after the burst.
    pub memory: PerSetup<(f64, f64)>,
    /// Kernel `skmem` KiB per connection of the proxy's own sockets after the burst.
    pub kernel: PerSetup<f64>,
    /// UDP requests per second and proxy CPU µs per request, a session per client.
    pub udp_session: PerSetup<(f64, Option<f64>)>,
    /// The same with a session per request.
    pub udp_request: PerSetup<(f64, Option<f64>)>,
}

impl Summary {
    /// The goals for Switchboard, each judged met or MISSED beside its figures.
    pub fn goals(&self) -> String {
        let get = |v: &[(Setup, Option<f64>)], s| find(v, s).copied();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut out = String::from(
            "\nGoals for Switchboard, issue 09's (printed, not asserted; ratios to nginx's \
             defaults, and for rates also to nginx hc+ka, which does what SPEC 4 asks)\n",
        );
        for (what, bits) in [
            ("one-stream", &self.one_stream),
            ("eight-stream", &self.eight_streams),
        ] {
            let (sb, ng) = (get(bits, Setup::Switchboard), get(bits, Setup::Nginx));
            if let (Some(sb), Some(ng)) = (sb, ng) {
                let ratio = sb / ng;
                let _ = writeln!(
                    out,
                    "- {what} throughput >= 1.2x nginx: {ratio:.3}x ({:.2} vs {:.2} Gbit/s): {}",
                    sb / 1e9,
                    ng / 1e9,
                    verdict(ratio >= 1.2)
                );
            }
        }
        // (what, per, unit, which, results, the rate goal as a multiple of nginx's)
        for (what, per, unit, which, rates, times) in [
            (
                "connection rate",
                "connection",
                "conn/s",
                "2a, client closes",
                &self.rate,
                1.1,
            ),
            (
                "connection rate",
                "connection",
                "conn/s",
                "2b, backend closes",
                &self.rate_backend_closes,
                1.1,
            ),
            (
                "UDP request rate",
                "request",
                "req/s",
                "4a, a session per client",
                &self.udp_session,
                1.0,
            ),
            (
                "UDP request rate",
                "request",
                "req/s",
                "4b, a session per request",
                &self.udp_request,
                1.0,
            ),
        ] {
            let Some((sb_rate, sb_cpu)) = find(rates, Setup::Switchboard).copied() else {
                continue;
            };
            for (setup, goal) in [(Setup::Nginx, true), (Setup::NginxSpec, false)] {
                let Some((ng_rate, ng_cpu)) = find(rates, setup).copied() else {
                    continue;
                };
                let name = setup.name();
                // Beside nginx hc+ka the figures are shown, not judged: the goal is
                // set against nginx's defaults.
                let judged = |ok: bool| {
                    if goal {
                        verdict(ok)
                    } else {
                        "(for comparison)"
                    }
                };
                let _ = writeln!(
                    out,
                    "- {what} >= {times:.1}x {name} ({which}): {sb_rate:.0} vs {ng_rate:.0} \
                     {unit} ({:.3}x): {}",
                    sb_rate / ng_rate,
                    judged(sb_rate >= times * ng_rate)
                );
                if let (Some(sb_cpu), Some(ng_cpu)) = (sb_cpu, ng_cpu) {
                    let _ = writeln!(
                        out,
                        "- proxy CPU per {per} <= {name} ({which}): {sb_cpu:.1} vs \
                         {ng_cpu:.1} us: {}",
                        judged(sb_cpu <= ng_cpu)
                    );
                }
            }
        }
        if let Some((idle, burst)) = find(&self.memory, Setup::Switchboard).copied() {
            let _ = writeln!(
                out,
                "- <= 2.3 KiB per idle connection: {idle:.2} KiB: {}",
                verdict(idle <= 2.3)
            );
            let _ = writeln!(
                out,
                "- <= 2.3 KiB per connection after a 64 KiB burst: {burst:.2} KiB: {}",
                verdict(burst <= 2.3)
            );
        }
        let (sb, ng) = (
            find(&self.kernel, Setup::Switchboard).copied(),
            find(&self.kernel, Setup::Nginx).copied(),
        );
        if let (Some(sb), Some(ng)) = (sb, ng) {
            let _ = writeln!(
                out,
                "- kernel socket buffers (skmem) per connection after the burst <= nginx: \
                 {sb:.2} vs {ng:.2} KiB: {}",
                verdict(sb <= ng + 0.01)
            );
        }
        out
    }
}
