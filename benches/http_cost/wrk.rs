//! One wrk phase: `wrk -t1 -c16 -d<secs>s --latency -s <script> <url>` against a server
//! process, its CPU (utime+stime of the PID, `/proc`) read before wrk starts and after
//! it ends plus [`SETTLE`] (after heartbeats: until the store is quiet,
//! [`STORE_QUIET`]); and the Lua scripts wrk runs: a `done` that prints the
//! figures on one line, and for heartbeats a `request` cycling over the instances.
//!
//! Owns no goal: the bench's root file judges the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::SERVICE;
use crate::support::sample;

/// wrk's threads and connections, the same for every server.
pub const THREADS: u32 = 1;
pub const CONNS: u32 = 16;
/// Quiet time after wrk that still counts toward the phase's server CPU, so deferred
/// work is charged to the phase that caused it (switchboard writes heartbeats to its
/// store in a batch every second).
pub const SETTLE: Duration = Duration::from_millis(1500);
/// After a heartbeat phase the window runs on until the server has written no
/// heartbeat for this long (`switchboard_heartbeat_batch_size_sum` unchanged): a beat
/// is held back for up to 8 s (`sync::persist_gap`), so without it the writes a
/// heartbeat phase causes were charged to the `/servers` phase after it (at 100k
/// instances, tens of thousands of rows).
pub const STORE_QUIET: Duration = Duration::from_millis(9_500);
/// The longest wait for [`STORE_QUIET`].
const STORE_QUIET_LIMIT: Duration = Duration::from_secs(90);
/// How often `/metrics` is read while waiting for it.
const STORE_POLL: Duration = Duration::from_millis(500);
/// How much longer than its `-d` wrk may take (starting, loading its script) before
/// it is killed.
const GRACE: Duration = Duration::from_secs(60);
/// The line the `done` hook prints.
const MARK: &str = "SB_WRK ";

/// Prints what wrk measured on one line, read by [`parse`]. wrk counts an answer
/// over 399 as a `status` error.
const DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SB_WRK requests=%.0f duration_us=%.0f p50_us=%.1f p99_us=%.1f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// The wrk binary, the phase length and where the scripts go.
pub struct Wrk {
    pub bin: PathBuf,
    pub secs: u64,
    dir: tempfile::TempDir,
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Answers wrk read, and over how long (its own clock).
    pub requests: u64,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// wrk's socket errors, and answers over 399.
    pub errors: BTreeMap<String, u64>,
    /// utime+stime over the phase plus [`SETTLE`]: the server's, wrk's, and that of
    /// every other process on the machine (other builds).
    pub server_ticks: u64,
    pub wrk_ticks: u64,
    pub other_ticks: u64,
    pub window: Duration,
    pub clk_tck: u64,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Server CPU per answered request, in microseconds.
    pub fn cpu_us(&self) -> Option<f64> {
        per_req_us(self.server_ticks, self.requests, self.clk_tck)
    }

    /// wrk's CPU per answered request, in microseconds.
    pub fn wrk_us(&self) -> Option<f64> {
        per_req_us(self.wrk_ticks, self.requests, self.clk_tck)
    }

    /// Other processes' CPU over the phase, in % of one core.
    pub fn other_pct(&self) -> f64 {
        core_pct(self.other_ticks, self.window, self.clk_tck)
    }

    /// Socket errors and non-2xx/3xx answers, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// `ticks` over `requests`, in microseconds.
pub fn per_req_us(ticks: u64, requests: u64, clk_tck: u64) -> Option<f64> {
    (requests > 0 && clk_tck > 0).then(|| ticks as f64 * 1e6 / clk_tck as f64 / requests as f64)
}

/// `ticks` over `window`, in % of one core.
pub fn core_pct(ticks: u64, window: Duration, clk_tck: u64) -> f64 {
    let secs = window.as_secs_f64();
    if secs <= 0.0 || clk_tck == 0 {
        return 0.0;
    }
    ticks as f64 / clk_tck as f64 / secs * 100.0
}

/// CPU ticks read at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Ticks {
    pub server: u64,
    /// This bench process, and the children it has reaped (wrk).
    pub me: u64,
    pub children: u64,
    pub machine: u64,
}

impl Ticks {
    pub fn now(server_pid: u32) -> anyhow::Result<Ticks> {
        let me = sample::stat(std::process::id()).context("reading /proc/self/stat")?;
        Ok(Ticks {
            server: sample::cpu_ticks(server_pid)?,
            me: me.ticks,
            children: me.child_ticks,
            machine: sample::machine()?.procs,
        })
    }

    /// `(server, children, others)` from `self` to `later`.
    pub fn until(self, later: Ticks) -> (u64, u64, u64) {
        let server = later.server.saturating_sub(self.server);
        let me = later.me.saturating_sub(self.me);
        let children = later.children.saturating_sub(self.children);
        let others = later
            .machine
            .saturating_sub(self.machine)
            .saturating_sub(server + me + children);
        (server, children, others)
    }
}

impl Wrk {
    pub fn new(bin: PathBuf, secs: u64) -> anyhow::Result<Wrk> {
        let dir = tempfile::tempdir().context("temp dir for wrk scripts")?;
        Ok(Wrk { bin, secs, dir })
    }

    /// The script for fixed GET requests: only the `done` hook.
    pub fn get_script(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("get.lua");
        fs::write(&path, DONE).context("writing get.lua")?;
        Ok(path)
    }

    /// A script whose requests cycle over `beats` (`id`, `lease`, connections): a
    /// heartbeat each, built once in `init` (after wrk sets the Host header) from a
    /// data file, as a script with 100k literals would pass LuaJIT's constant limit.
    pub fn heartbeat_script(
        &self,
        name: &str,
        beats: impl Iterator<Item = (String, String, u64)>,
    ) -> anyhow::Result<PathBuf> {
        let data = self.dir.path().join(format!("{name}.txt"));
        let mut text = String::new();
        for (id, lease, conns) in beats {
            let _ = writeln!(text, "{id} {lease} {conns}");
        }
        fs::write(&data, text).context("writing the heartbeat list")?;
        let script = format!(
            r#"
local reqs = {{}}
local n = 0
local i = 0
init = function(args)
  for line in io.lines([[{data}]]) do
    local id, lease, conns = line:match("^(%S+) (%S+) (%d+)$")
    if id then
      n = n + 1
      reqs[n] = wrk.format("PUT", "/v1/services/{SERVICE}/instances/" .. id .. "/heartbeat",
        {{ ["X-Lease"] = lease, ["Content-Type"] = "application/json" }},
        '{{"connections":' .. conns .. '}}')
    end
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
{DONE}"#,
            data = data.display()
        );
        let path = self.dir.path().join(format!("{name}.lua"));
        fs::write(&path, script).context("writing the heartbeat script")?;
        Ok(path)
    }

    /// Runs wrk on `url` with `script` and reads `server_pid`'s CPU around it.
    pub async fn run(
        &self,
        script: &Path,
        url: &str,
        server_pid: u32,
        clk_tck: u64,
        store_of: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Measured> {
        let before = Ticks::now(server_pid)?;
        let started = std::time::Instant::now();
        let child = tokio::process::Command::new(&self.bin)
            .args(["-t", &THREADS.to_string(), "-c", &CONNS.to_string()])
            .args(["-d", &format!("{}s", self.secs), "--latency", "-s"])
            .arg(script)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropped (on timeout), it is killed by its own PID.
            .kill_on_drop(true)
            .spawn()
            .context("starting wrk")?;
        let limit = Duration::from_secs(self.secs) + GRACE;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => out.context("waiting for wrk")?,
            Err(_) => bail!("wrk did not finish within {limit:?}; killed"),
        };
        match store_of {
            Some(addr) => store_quiet(addr).await?,
            None => tokio::time::sleep(SETTLE).await,
        }
        let window = started.elapsed();
        let after = Ticks::now(server_pid)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "wrk failed ({}): {} {}",
                out.status,
                stdout.trim(),
                stderr.trim()
            );
        }
        let mut m = parse(&stdout)?;
        (m.server_ticks, m.wrk_ticks, m.other_ticks) = before.until(after);
        m.window = window;
        m.clk_tck = clk_tck;
        Ok(m)
    }
}

/// Waits until the server at `addr` has written no heartbeat to its store for
/// [`STORE_QUIET`], for at most [`STORE_QUIET_LIMIT`].
async fn store_quiet(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut last = (beats_written(addr).await?, std::time::Instant::now());
    while started.elapsed() < STORE_QUIET_LIMIT {
        tokio::time::sleep(STORE_POLL).await;
        let now = beats_written(addr).await?;
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() >= STORE_QUIET {
            return Ok(());
        }
    }
    bail!("the server still wrote heartbeats {STORE_QUIET_LIMIT:?} after wrk ended")
}

/// `switchboard_heartbeat_batch_size_sum`: heartbeats written to the store in all.
async fn beats_written(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    let req = crate::support::http::request("GET", "/metrics", addr, &[], b"");
    let answer = crate::support::http::one_shot(addr, &req, Duration::from_secs(5)).await?;
    Ok(String::from_utf8_lossy(&answer.body)
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_heartbeat_batch_size_sum "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The figures of the `done` hook's line.
fn parse(stdout: &str) -> anyhow::Result<Measured> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARK))
        .with_context(|| format!("wrk printed no {MARK:?} line: {}", stdout.trim()))?;
    let fields: BTreeMap<&str, f64> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .with_context(|| format!("no {k} in wrk's line {line:?}"))
    };
    let errors = ["connect", "read", "write", "status", "timeout"]
        .into_iter()
        .map(|k| Ok((k.to_owned(), get(k)? as u64)))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    Ok(Measured {
        requests: get("requests")? as u64,
        secs: get("duration_us")? / 1e6,
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
        errors,
        ..Measured::default()
    })
}
