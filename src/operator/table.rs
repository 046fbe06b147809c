//! Pure rendering of the operator commands' answers into aligned tables, like
//! `kubectl get` or `consul members`: upper-case headers, columns padded to their
//! widest cell and three spaces apart, numbers right-aligned, no trailing blanks.
//! Holds the fields of the server's answers that the tables show (the rest is
//! ignored, so new server fields change nothing here). No I/O.

use std::fmt::Write as _;

use serde::Deserialize;

/// `GET /v1/services`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServicesAnswer {
    /// One row per service.
    pub services: Vec<ServiceRow>,
}

/// One service of `GET /v1/services`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServiceRow {
    /// Service name.
    pub name: String,
    /// Live, not draining instances (handed out).
    #[serde(alias = "up")]
    pub live: u64,
    /// Draining instances.
    pub draining: u64,
    /// Expired instances.
    pub expired: u64,
    /// Total reported connections.
    pub connections: u64,
    /// The registry suspects its own network for this service.
    pub self_preservation: bool,
    /// The `/servers` version.
    pub version: u64,
}

/// `GET /v1/services/{service}/instances`.
#[derive(Debug, Clone, Deserialize)]
pub struct InstancesAnswer {
    /// One row per instance, all states.
    pub instances: Vec<InstanceRow>,
}

/// One instance of the admin listing (and the drain answer).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct InstanceRow {
    /// Instance id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// Zone label.
    pub zone: Option<String>,
    /// `up`, `draining` or `expired`.
    pub state: String,
    /// Weight (1..=1000).
    pub weight: u32,
    /// Reported connections.
    pub connections: u64,
    /// Hand-outs since the last heartbeat.
    pub pending: u64,
    /// `(connections + pending) / weight`.
    pub load: f64,
    /// Age of the last heartbeat.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Tags.
    pub tags: Vec<String>,
    /// RFC 3339 registration time.
    pub registered_at: String,
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Renders `rows` under `headers`, each column as wide as its widest cell. Rows
/// shorter than the headers get empty cells.
pub fn render(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (n, ((_, align), width)) in headers.iter().zip(&widths).enumerate() {
            let cell = row.get(n).map_or("", String::as_str);
            if n > 0 {
                line.push_str("   ");
            }
            match align {
                Align::Left => {
                    let _ = write!(line, "{cell:<width$}");
                }
                Align::Right => {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `switchboard services` table.
pub fn services(services: &[ServiceRow]) -> String {
    use Align::{Left, Right};
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.live.to_string(),
                s.draining.to_string(),
                s.expired.to_string(),
                s.connections.to_string(),
                if s.self_preservation { "yes" } else { "no" }.to_owned(),
                s.version.to_string(),
            ]
        })
        .collect();
    render(
        &[
            ("SERVICE", Left),
            ("LIVE", Right),
            ("DRAINING", Right),
            ("EXPIRED", Right),
            ("CONNECTIONS", Right),
            ("SELF-PRESERVATION", Left),
            ("VERSION", Right),
        ],
        &rows,
    )
}

/// The `switchboard instances` table (also the row printed after a drain).
pub fn instances(instances: &[InstanceRow]) -> String {
    use Align::{Left, Right};
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.address.clone(),
                dash(i.zone.as_deref().unwrap_or("")),
                i.state.clone(),
                i.weight.to_string(),
                i.connections.to_string(),
                i.pending.to_string(),
                format!("{:.1}", i.load),
                i.last_heartbeat_ms_ago.map_or_else(|| "-".to_owned(), ago),
                dash(&i.tags.join(",")),
                i.registered_at.clone(),
            ]
        })
        .collect();
    render(
        &[
            ("ID", Left),
            ("ADDRESS", Left),
            ("ZONE", Left),
            ("STATE", Left),
            ("WEIGHT", Right),
            ("CONNECTIONS", Right),
            ("PENDING", Right),
            ("LOAD", Right),
            ("HEARTBEAT", Right),
            ("TAGS", Left),
            ("REGISTERED", Left),
        ],
        &rows,
    )
}

/// What `switchboard drain` prints: one sentence, then the instance's row.
pub fn drained(service: &str, instance: &InstanceRow, evacuate_per_sec: Option<u64>) -> String {
    let what = match evacuate_per_sec {
        Some(rate) => format!("it is asked to close {rate} connections/s until it has none"),
        None => "its existing connections are left alone".to_owned(),
    };
    format!(
        "drained {} ({}) in service {service}: no longer handed out; {what}\n\n{}",
        instance.id,
        instance.address,
        instances(std::slice::from_ref(instance))
    )
}

/// `-` for an empty cell, so that columns stay readable.
fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// A heartbeat age: `850ms ago`, `4.2s ago`, `3m10s ago`, `2h05m ago`.
pub fn ago(ms: u64) -> String {
    let age = if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1_000, ms % 1_000 / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    };
    format!("{age} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, address: &str, state: &str) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            address: address.into(),
            state: state.into(),
            weight: 1,
            registered_at: "2026-12-01T09:36:30.637Z".into(),
            ..InstanceRow::default()
        }
    }

    #[test]
    fn the_services_table_is_aligned() {
        let rows = [
            ServiceRow {
                name: "default".into(),
                live: 2,
                draining: 1,
                connections: 1234,
                version: 42,
                ..ServiceRow::default()
            },
            ServiceRow {
                name: "mqtt-eu".into(),
                live: 12,
                expired: 3,
                connections: 56,
                self_preservation: true,
                version: 7,
                ..ServiceRow::default()
            },
        ];
        let expected = "\
SERVICE   LIVE   DRAINING   EXPIRED   CONNECTIONS   SELF-PRESERVATION   VERSION
default      2          1         0          1234   no                       42
mqtt-eu     12          0         3            56   yes                       7
";
        assert_eq!(services(&rows), expected);
    }

    #[test]
    fn the_instances_table_is_aligned() {
        let mut a = instance("a1", "10.0.0.5:6666", "up");
        a.zone = Some("eu-1".into());
        a.connections = 1200;
        a.pending = 3;
        a.load = 1203.0;
        a.last_heartbeat_ms_ago = Some(850);
        a.tags = vec!["v2".into(), "canary".into()];
        let mut b = instance("b22", "[::1]:7", "draining");
        b.weight = 3;
        b.connections = 10;
        b.load = 10.0 / 3.0;
        b.last_heartbeat_ms_ago = Some(4_250);
        let expected = "\
ID    ADDRESS         ZONE   STATE      WEIGHT   CONNECTIONS   PENDING     LOAD   HEARTBEAT   TAGS        REGISTERED
a1    10.0.0.5:6666   eu-1   up              1          1200         3   1203.0   850ms ago   v2,canary   2026-12-01T09:36:30.637Z
b22   [::1]:7         -      draining        3            10         0      3.3    4.2s ago   -           2026-12-01T09:36:30.637Z
";
        assert_eq!(instances(&[a, b]), expected);
    }

    #[test]
    fn an_empty_list_is_the_header_alone() {
        assert_eq!(
            services(&[]),
            "SERVICE   LIVE   DRAINING   EXPIRED   CONNECTIONS   SELF-PRESERVATION   VERSION\n"
        );
        assert!(instances(&[]).starts_with("ID   ADDRESS   ZONE   STATE"));
        assert_eq!(instances(&[]).lines().count(), 1);
    }

    #[test]
    fn lines_have_no_trailing_blanks_and_wide_cells_widen_columns() {
        let text = render(
            &[("A", Align::Left), ("B", Align::Left)],
            &[vec!["wide-cell".into(), String::new()], vec!["x".into()]],
        );
        assert_eq!(text, "A           B\nwide-cell\nx\n");
    }

    #[test]
    fn the_drain_message_names_the_instance_and_the_pace() {
        let row = instance("a1", "10.0.0.5:6666", "draining");
        let text = drained("default", &row, Some(200));
        assert!(
            text.starts_with("drained a1 (10.0.0.5:6666) in service default"),
            "{text}"
        );
        assert!(text.contains("200 connections/s"), "{text}");
        assert!(
            text.contains("a1   10.0.0.5:6666   -      draining"),
            "{text}"
        );
        assert!(drained("default", &row, None).contains("left alone"));
    }

    #[test]
    fn heartbeat_ages_read_like_durations() {
        assert_eq!(ago(0), "0ms ago");
        assert_eq!(ago(999), "999ms ago");
        assert_eq!(ago(4_250), "4.2s ago");
        assert_eq!(ago(190_000), "3m10s ago");
        assert_eq!(ago(7_500_000), "2h05m ago");
    }

    #[test]
    fn answers_parse_with_unknown_and_missing_fields() {
        let answer: ServicesAnswer = serde_json::from_str(
            r#"{"services":[{"name":"default","up":2,"draining":0,"future":1}]}"#,
        )
        .unwrap();
        assert_eq!(answer.services[0].live, 2);
        let answer: InstancesAnswer = serde_json::from_str(
            r#"{"service":"s","instances":[{"id":"x","address":"a:1","zone":null,"state":"up","load":0.5,"metadata":{}}]}"#,
        )
        .unwrap();
        assert_eq!(answer.instances[0].zone, None);
        assert_eq!(answer.instances[0].load, 0.5);
    }
}
