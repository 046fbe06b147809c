//! The propagation probes (registered on one node, polled on the next until listed) and
//! the `GET /v1/services` samples taken on every node during the window. Owns what they
//! measure; knows nothing of PostgreSQL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::{
    PROBE_POLL, PROBE_SERVICE, PROBE_TIMEOUT, PROBE_TTL_SECS, SAMPLE_EVERY, SERVICE, call, request,
};
use crate::support::http::{self, Conn};

#[derive(Debug, Default, Clone)]
pub struct ProbeResult {
    pub planned: usize,
    pub registered: usize,
    pub seen: usize,
    pub timed_out: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub delays_us: Vec<u64>,
}

/// Probe `j`: registered on node `j % n`, polled on node `(j + 1) % n` until listed.
pub async fn run_probes(
    addrs: Vec<SocketAddr>,
    probes: usize,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> ProbeResult {
    let mut result = ProbeResult {
        planned: probes,
        ..ProbeResult::default()
    };
    if probes == 0 {
        return result;
    }
    let n = addrs.len();
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let spacing = (end - start) / probes as u32;
    let poll = request(
        "GET",
        &format!("/servers?service={PROBE_SERVICE}&limit=100"),
        &[],
        b"",
    );
    for j in 0..probes {
        let at = start + spacing * j as u32 + spacing / 2;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let address = format!("10.250.{}.{}:7000", j / 200, j % 200 + 1);
        let body = format!("{{\"address\":\"{address}\",\"ttl_secs\":{PROBE_TTL_SECS}}}");
        let req = request(
            "POST",
            &format!("/v1/services/{PROBE_SERVICE}/instances"),
            &[],
            body.as_bytes(),
        );
        let (on, seen_on) = (j % n, (j + 1) % n);
        match call(&mut conns[on], addrs[on], &req).await {
            Ok(a) if a.status == 200 || a.status == 201 => {}
            Ok(a) => {
                result.failed += 1;
                result.first_error.get_or_insert_with(|| {
                    format!(
                        "register: status {} {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    )
                });
                continue;
            }
            Err(err) => {
                result.failed += 1;
                result.first_error.get_or_insert(format!("register: {err}"));
                continue;
            }
        }
        let acked = Instant::now();
        result.registered += 1;
        let needle = format!("\"{address}\"");
        let mut seen = false;
        while acked.elapsed() < PROBE_TIMEOUT {
            if let Ok(a) = call(&mut conns[seen_on], addrs[seen_on], &poll).await
                && a.status == 200
                && http::find(&a.body, needle.as_bytes()).is_some()
            {
                result
                    .delays_us
                    .push(u64::try_from(acked.elapsed().as_micros()).unwrap_or(u64::MAX));
                seen = true;
                break;
            }
            tokio::time::sleep(PROBE_POLL).await;
        }
        if seen {
            result.seen += 1;
        } else {
            result.timed_out += 1;
        }
    }
    result
}

/// One service in `GET /v1/services`.
#[derive(Debug, Clone, Default)]
pub struct ServiceView {
    pub live: u64,
    pub expired: u64,
    pub draining: u64,
    pub self_preservation: bool,
}

pub async fn services_view(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, ServiceView>> {
    let mut conn = None;
    let a = call(&mut conn, addr, &request("GET", "/v1/services", &[], b""))
        .await
        .map_err(|e| anyhow!(e))?;
    parse_services(&a.body)
}

pub fn parse_services(body: &[u8]) -> anyhow::Result<BTreeMap<String, ServiceView>> {
    let v: Value = serde_json::from_slice(body).context("GET /v1/services: bad JSON")?;
    let list = v
        .get("services")
        .and_then(Value::as_array)
        .context("GET /v1/services: no services")?;
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(list
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_owned();
            Some((
                name,
                ServiceView {
                    live: num(s, "live"),
                    expired: num(s, "expired"),
                    draining: num(s, "draining"),
                    self_preservation: s
                        .get("self_preservation")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
            ))
        })
        .collect())
}

/// `GET /v1/services` samples of one node during the window.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub taken: u64,
    pub failed: u64,
    pub min_live: Option<u64>,
    pub max_expired: u64,
    pub self_preservation: bool,
}

pub async fn sample_services(addrs: Vec<SocketAddr>, end: tokio::time::Instant) -> Vec<Samples> {
    let mut out = vec![Samples::default(); addrs.len()];
    let mut conns: Vec<Option<Conn>> = (0..addrs.len()).map(|_| None).collect();
    let req = request("GET", "/v1/services", &[], b"");
    let mut next = tokio::time::Instant::now() + SAMPLE_EVERY / 2;
    while next < end {
        tokio::time::sleep_until(next).await;
        next += SAMPLE_EVERY;
        for (i, &addr) in addrs.iter().enumerate() {
            let view = match call(&mut conns[i], addr, &req).await {
                Ok(a) if a.status == 200 => parse_services(&a.body).ok(),
                _ => None,
            };
            let s = &mut out[i];
            match view.as_ref().and_then(|v| v.get(SERVICE)) {
                Some(v) => {
                    s.taken += 1;
                    s.min_live = Some(s.min_live.map_or(v.live, |m| m.min(v.live)));
                    s.max_expired = s.max_expired.max(v.expired);
                    s.self_preservation |= v.self_preservation;
                }
                None => s.failed += 1,
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
