//! The fleet bench's machinery: the backend process (this binary again, with
//! `SB_FLEET_ROLE=backend`), the harness side of those processes and of the registry
//! process, and the rounds: what each saw and how a row prints.
//!
//! Owns no goal: the scenarios in `fleet.rs` decide what the rounds prove.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_client::Registry;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::fleet::{Event, EventKind, FleetBackend, Note, Swarm};
use crate::support::procs::{self, Server};
use crate::support::report::join;
use crate::support::{http, knobs};
use crate::{
    Knobs, PLACE_TIMEOUT, REGISTRY, ROLE, SERVICE, SETTLE_ROUNDS, START_TIMEOUT, STOP_TIMEOUT,
    STORM_MIN, TOLERANCE, TTL_SECS, UNPLACED_SHARE,
};

// ---------------------------------------------------------------------------------
// The backend process
// ---------------------------------------------------------------------------------

/// A backend of the fleet as an OS process: runs until stdin closes or SIGTERM.
pub fn backend_process() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(serve_backend()));
    knobs::exit_on_error("fleet backend", outcome);
    // Not waiting for tokio's blocking stdin reader to return.
    std::process::exit(0);
}

async fn serve_backend() -> anyhow::Result<()> {
    let _ = switchboard::rlimit::raise();
    let url = std::env::var(REGISTRY).context("no registry URL")?;
    let registry = Registry::builder([url])
        .request_timeout(Duration::from_secs(2))
        .build()?;
    let mut backend = FleetBackend::start(registry, SERVICE, TTL_SECS).await?;
    println!("addr {}", backend.addr);
    println!("id {}", backend.registered(START_TIMEOUT).await?);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            note = backend.next_note() => match note {
                Some(Note::Shed { asked, live }) => println!("shed {asked} live {live}"),
                Some(Note::Closed { closed }) => println!("closed {closed}"),
                None => break,
            },
            read = stdin.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
            _ = sigterm.recv() => break,
        }
    }
    backend.stop(STOP_TIMEOUT).await;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------------

/// What one round saw.
pub struct Round {
    pub n: u32,
    /// Per backend in start order: (port, life, devices held device-side).
    held: Vec<(u16, Life, usize)>,
    unplaced: usize,
    /// `max/mean`, `min/mean` of the up backends in the registry's listing.
    registry: Option<(f64, f64)>,
    /// Device events of the round.
    pub events: Vec<Event>,
    /// `/servers` calls per second.
    resolves_per_sec: f64,
    /// Sum of the `shed` hints the backends printed.
    pub shed: u64,
    /// Connections the backends closed for hints, by their own count.
    closed: u64,
    /// The highest `shed / live` of one backend in the round.
    pub shed_ratio: f64,
}

/// The `shed` lines of the backends in one round.
#[derive(Default)]
struct Sheds {
    asked: u64,
    closed: u64,
    ratio: f64,
}

impl Round {
    fn up(&self) -> Vec<usize> {
        let up = self.held.iter().filter(|(_, life, _)| *life == Life::Up);
        up.map(|(_, _, n)| *n).collect()
    }

    pub fn held_on(&self, port: u16) -> Option<usize> {
        self.held.iter().find(|h| h.0 == port).map(|h| h.2)
    }

    /// Within ±[`TOLERANCE`] over the up backends, and (almost) every device placed.
    pub fn balanced(&self, devices: usize) -> bool {
        let placed = self.unplaced as f64 <= devices as f64 * UNPLACED_SHARE;
        placed
            && spread(&self.up())
                .is_some_and(|(max, min)| max <= 1.0 + TOLERANCE && min >= 1.0 - TOLERANCE)
    }

    /// Reconnects (connections that moved) in the round.
    pub fn moved(&self) -> usize {
        self.reconnects().values().sum()
    }

    fn reconnects(&self) -> BTreeMap<u16, usize> {
        let mut per_port = BTreeMap::new();
        for e in self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Connected { first: false })
        {
            *per_port.entry(e.port).or_default() += 1;
        }
        per_port
    }

    fn print(&self, devices: usize) {
        let held = join(&self.held, " ", |(_, life, n)| match life {
            Life::Up => n.to_string(),
            Life::Draining => format!("{n}*"),
            Life::Dead => "x".into(),
        });
        let pair = |s: Option<(f64, f64)>| s.map_or("-".into(), |(a, b)| format!("{a:.2}/{b:.2}"));
        let moved = self.moved();
        let max = self.reconnects().values().copied().max().unwrap_or(0);
        let fair = moved as f64 / self.up().len().max(1) as f64;
        let storm = if moved >= STORM_MIN {
            format!("{:.2}", max as f64 / fair)
        } else {
            "-".into()
        };
        let row = [
            pair(spread(&self.up())),
            pair(self.registry),
            format!("{:.2}%", 100.0 * moved as f64 / devices as f64),
            format!("{:.0}", self.resolves_per_sec),
            max.to_string(),
            storm,
            self.shed.to_string(),
        ];
        print_row(&self.n.to_string(), &held, &row);
    }
}

/// One line of the round table, columns aligned with [`print_columns`].
fn print_row(n: &str, held: &str, rest: &[String; 7]) {
    let [spread, registry, moved, resolves, max, storm, shed] = rest;
    println!(
        "{n:>3}  {held:<30} {spread:>12} {registry:>12} {moved:>7} {resolves:>7} {max:>6} {storm:>6} {shed:>5}"
    );
}

/// The header of the round table.
fn print_columns() {
    let names = [
        "max,min/mean",
        "registry",
        "moved",
        "/srv/s",
        "rc max",
        "×fair",
        "shed",
    ];
    print_row(
        "rnd",
        "held per backend (devices)",
        &names.map(String::from),
    );
}

/// `max/mean`, `min/mean`.
fn spread(counts: &[usize]) -> Option<(f64, f64)> {
    let total: usize = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return None;
    }
    let mean = total as f64 / counts.len() as f64;
    let max = counts.iter().copied().max()? as f64;
    let min = counts.iter().copied().min()? as f64;
    Some((max / mean, min / mean))
}

// ---------------------------------------------------------------------------------
// The fleet's processes
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Up,
    Draining,
    Dead,
}

/// A backend process.
pub struct Proc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    id: String,
    /// Its stdout lines.
    lines: mpsc::UnboundedReceiver<String>,
    /// Closing it asks the backend to deregister and exit.
    stdin: Option<ChildStdin>,
    life: Life,
}

impl Proc {
    /// kill -9 by PID, and reaped.
    pub fn kill(&mut self) {
        procs::signal(self.pid, "KILL");
        let _ = self.child.wait();
        self.life = Life::Dead;
    }

    /// Waits for its next line starting with `prefix`; the rest of it.
    async fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Ok(None) => bail!("backend (pid {}) exited before {prefix:?}", self.pid),
                Err(_) => bail!(
                    "backend (pid {}) printed no {prefix:?} within {START_TIMEOUT:?}",
                    self.pid
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals this child's own PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scenario's fleet: the registry, the backends and the swarm.
pub struct Fleet<'k> {
    pub k: &'k Knobs,
    /// The store and the config file, kept across registry restarts.
    data: tempfile::TempDir,
    port: u16,
    registry: Option<Server>,
    pub backends: Vec<Proc>,
    swarm: Option<Swarm>,
    http: reqwest::Client,
}

impl<'k> Fleet<'k> {
    /// The registry, `backends` backend processes and the swarm, started (the swarm
    /// still connecting).
    pub async fn start(k: &'k Knobs, backends: usize) -> anyhow::Result<Fleet<'k>> {
        let data = tempfile::tempdir().context("temp dir")?;
        let config = format!(
            "[rebalance]\nreconnect_jitter_ms = {}\nshed_max_ratio = {}\n",
            k.jitter_ms, k.shed_ratio
        );
        std::fs::write(data.path().join("switchboard.toml"), config)?;
        let mut fleet = Fleet {
            k,
            data,
            port: procs::free_port()?,
            registry: None,
            backends: Vec::new(),
            swarm: None,
            http: switchboard::tls::client::reqwest_builder(&Default::default())
                .map_err(anyhow::Error::msg)?
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        fleet.start_registry()?;
        for _ in 0..backends {
            fleet.add_backend().await?;
        }
        let devices = Registry::builder([fleet.url()])
            .request_timeout(Duration::from_secs(3))
            .build()?;
        fleet.swarm = Some(Swarm::start(&devices, SERVICE, k.devices));
        Ok(fleet)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn swarm(&self) -> &Swarm {
        self.swarm.as_ref().expect("a swarm until the fleet stops")
    }

    /// Starts the registry on the fleet's port and store.
    pub fn start_registry(&mut self) -> anyhow::Result<()> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let db = format!("sqlite://{}/fleet.db", self.data.path().display());
        let config = self.data.path().join("switchboard.toml");
        let config = config.to_string_lossy();
        let args = ["--no-forward", "--db", &db, "--config", &config];
        let http = format!("127.0.0.1:{}", self.port);
        let cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        let (server, _) = tokio::task::block_in_place(|| {
            procs::start_switchboard_at(cmd, dir, &http, &args, &[], http::START_TIMEOUT)
        })?;
        self.registry = Some(server);
        Ok(())
    }

    /// Stops the registry with `signal` (by PID) and reports what it logged.
    pub fn stop_registry(&mut self, signal: &str) -> anyhow::Result<()> {
        let mut server = self.registry.take().context("no registry running")?;
        let note = if signal == "KILL" {
            procs::signal(server.pid, "KILL");
            let status = server.child.wait()?;
            format!("killed ({status})")
        } else {
            tokio::task::block_in_place(|| server.stop(STOP_TIMEOUT))
        };
        let log = server.log_info(4);
        println!(
            "registry (pid {}) after SIG{signal}: {note}; it logged {} warnings, {} errors {:?}",
            server.pid, log.warnings, log.errors, log.lines
        );
        Ok(())
    }

    /// Starts one more backend process and waits until it is registered.
    pub async fn add_backend(&mut self) -> anyhow::Result<()> {
        let n = self.backends.len() + 1;
        let log = std::fs::File::create(self.data.path().join(format!("backend-{n}.log")))?;
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE, "backend")
            .env(REGISTRY, self.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting a backend process")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Proc {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            id: String::new(),
            lines,
            life: Life::Up,
        };
        proc.addr = proc.expect("addr ").await?.parse()?;
        proc.id = proc.expect("id ").await?;
        self.backends.push(proc);
        Ok(())
    }

    /// Drains backend `i` with a paced evacuation (no admin token is configured, so
    /// the admin endpoints are open).
    pub async fn drain(&mut self, i: usize, per_sec: u32) -> anyhow::Result<()> {
        let url = format!(
            "{}/v1/services/{SERVICE}/instances/{}/drain",
            self.url(),
            self.backends[i].id
        );
        let body = serde_json::json!({ "evacuate_per_sec": per_sec });
        let resp = self.http.post(url).json(&body).send().await?;
        if !resp.status().is_success() {
            bail!(
                "drain answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        self.backends[i].life = Life::Draining;
        Ok(())
    }

    /// Devices backend `i` holds now.
    pub fn held_by(&self, i: usize) -> usize {
        let port = self.backends[i].addr.port();
        self.swarm().holdings().get(&port).copied().unwrap_or(0)
    }

    /// Backends neither draining nor dead.
    pub fn up_count(&self) -> usize {
        self.backends.iter().filter(|b| b.life == Life::Up).count()
    }

    /// Devices held by each up backend, now.
    pub fn up_counts(&self) -> Vec<usize> {
        let holdings = self.swarm().holdings();
        let up = self.backends.iter().filter(|b| b.life == Life::Up);
        up.map(|b| holdings.get(&b.addr.port()).copied().unwrap_or(0))
            .collect()
    }

    /// Waits until every device is placed, then until a round is balanced with no
    /// shed twice in a row.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.swarm().placed() < self.k.devices {
            if started.elapsed() > PLACE_TIMEOUT {
                bail!(
                    "only {} of {} devices placed within {PLACE_TIMEOUT:?}",
                    self.swarm().placed(),
                    self.k.devices
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let placed = started.elapsed();
        let mut clock = Clock::new(self);
        let mut calm = 0;
        for _ in 0..SETTLE_ROUNDS {
            let r = self.round(&mut clock).await;
            calm = if r.balanced(self.k.devices) && r.shed == 0 {
                calm + 1
            } else {
                0
            };
            if calm == 2 {
                println!(
                    "all {} devices placed after {placed:.1?}; settled after {} rounds: {:?}",
                    self.k.devices,
                    r.n,
                    r.up()
                );
                return Ok(());
            }
        }
        bail!(
            "not settled after {SETTLE_ROUNDS} rounds: {:?}",
            self.up_counts()
        )
    }

    /// Prints rounds from now until `done` says so or `max` rounds; them all.
    pub async fn observe(&mut self, max: u32, mut done: impl FnMut(&Round) -> bool) -> Vec<Round> {
        print_columns();
        let counted_before = self.registry_shed_total().await;
        let mut clock = Clock::new(self);
        let mut rounds: Vec<Round> = Vec::new();
        while clock.n < max {
            let r = self.round(&mut clock).await;
            r.print(self.k.devices);
            let stop = done(&r);
            rounds.push(r);
            if stop {
                break;
            }
        }
        // Hints lost on the way show as the registry counting more than the backends
        // printed; connections a backend could not find as fewer closed than asked.
        let counted = match (counted_before, self.registry_shed_total().await) {
            (Some(before), Some(after)) if after >= before => (after - before).to_string(),
            _ => "?".into(),
        };
        let asked = rounds.iter().map(|r| r.shed).sum::<u64>();
        let closed = rounds.iter().map(|r| r.closed).sum::<u64>();
        println!(
            "{} rounds; shed: registry counted {counted}, backends were asked {asked} and closed \
             {closed}; connects that found no server {}",
            rounds.len(),
            self.swarm().failures()
        );
        rounds
    }

    /// Waits for the round's end and gathers what it saw.
    async fn round(&mut self, clock: &mut Clock) -> Round {
        clock.n += 1;
        tokio::time::sleep_until((clock.t0 + clock.every * clock.n).into()).await;
        let holdings = self.swarm().holdings();
        let events = self.swarm().take_events();
        let held: Vec<(u16, Life, usize)> = self
            .backends
            .iter()
            .map(|b| {
                (
                    b.addr.port(),
                    b.life,
                    holdings.get(&b.addr.port()).copied().unwrap_or(0),
                )
            })
            .collect();
        let resolves = self.swarm().resolves();
        let per_sec = (resolves - clock.resolves) as f64 / clock.every.as_secs_f64();
        clock.resolves = resolves;
        let sheds = self.take_sheds();
        Round {
            n: clock.n,
            unplaced: self.k.devices.saturating_sub(holdings.values().sum()),
            held,
            registry: self.registry_spread().await,
            events,
            resolves_per_sec: per_sec,
            shed: sheds.asked,
            closed: sheds.closed,
            shed_ratio: sheds.ratio,
        }
    }

    /// The `shed` hints the backends printed since the last call: their sum, and the
    /// highest share of one backend's connections asked for.
    fn take_sheds(&mut self) -> Sheds {
        let mut all = Sheds::default();
        for b in &mut self.backends {
            let (mut asked, mut live) = (0u64, 0u64);
            while let Ok(line) = b.lines.try_recv() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
                match words.first() {
                    Some(&"shed") => {
                        asked += number(1).unwrap_or(0);
                        live = live.max(number(3).unwrap_or(0));
                    }
                    Some(&"closed") => all.closed += number(1).unwrap_or(0),
                    _ => {}
                }
            }
            all.asked += asked;
            // A draining backend's evacuation is not rebalancing.
            if b.life == Life::Up && live > 0 {
                all.ratio = all.ratio.max(asked as f64 / live as f64);
            }
        }
        all
    }

    /// `switchboard_shed_connections_total` of the service, as the registry counts it.
    async fn registry_shed_total(&self) -> Option<u64> {
        let url = format!("{}/metrics", self.url());
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        let wanted = format!("service=\"{SERVICE}\"");
        let line = text
            .lines()
            .find(|l| l.starts_with("switchboard_shed_connections_total") && l.contains(&wanted))?;
        line.split_whitespace()
            .last()?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }

    /// The spread of the up instances as the registry lists them.
    async fn registry_spread(&self) -> Option<(f64, f64)> {
        let url = format!("{}/v1/services/{SERVICE}/instances", self.url());
        let body: serde_json::Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let counts: Vec<usize> = body["instances"]
            .as_array()?
            .iter()
            .filter(|i| i["state"] == "up")
            .filter_map(|i| i["connections"].as_u64())
            .map(|c| c as usize)
            .collect();
        spread(&counts)
    }

    /// Stops the swarm, then every backend and the registry by PID.
    pub async fn stop(mut self) {
        if let Some(swarm) = self.swarm.take() {
            swarm.stop(STOP_TIMEOUT).await;
        }
        for b in &mut self.backends {
            b.stdin = None;
        }
        let mut children: Vec<&mut Child> = self
            .backends
            .iter_mut()
            .filter(|b| b.life != Life::Dead)
            .map(|b| &mut b.child)
            .collect();
        let notes = tokio::task::block_in_place(|| procs::stop_all(&mut children, STOP_TIMEOUT));
        if let Some(mut server) = self.registry.take() {
            let note = tokio::task::block_in_place(|| server.stop(STOP_TIMEOUT));
            let log = server.log_info(4);
            println!(
                "registry: {note}; logged {} warnings, {} errors {:?}",
                log.warnings, log.errors, log.lines
            );
        }
        println!("backends: {}", join(notes, "; ", |n| n));
    }
}

/// The rounds' clock: round `n` ends at `t0 + n × every`.
struct Clock {
    t0: Instant,
    every: Duration,
    n: u32,
    resolves: u64,
}

impl Clock {
    fn new(fleet: &Fleet<'_>) -> Clock {
        Clock {
            t0: Instant::now(),
            every: fleet.k.round,
            n: 0,
            resolves: fleet.swarm().resolves(),
        }
    }
}
