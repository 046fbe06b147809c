//! The device's waits between connections (SPEC section 11): a random jitter after a
//! lost connection, full-jitter exponential backoff after a failed attempt, its count
//! reset by a connection that lasted [`RECONNECT_RESET_AFTER`]. [`Backoff`] is the pure
//! part (no I/O; the clock and the random source are arguments); [`Reconnect`] drives a
//! [`Device`] with it. The attempt itself (resolve, ask again per pick) is the
//! device's; this module only decides how long to wait before it.

use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::registry::Server;

/// The cap of the first backoff after a failed attempt: caps go 1 s, 2 s, 4 s ...
pub const RECONNECT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The largest cap: after seven failed attempts in a row (64 s), every cap is 120 s.
pub const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(120);

/// A connection that lasted this long resets the count of failed attempts. A shorter
/// one does not, so a server that accepts and drops at once is not hammered.
pub const RECONNECT_RESET_AFTER: Duration = Duration::from_secs(60);

/// Full-jitter exponential backoff between failed attempts: the `n`-th wait in a row
/// (from 0) is random in `0..min(120 s, 1 s × 2^n)`; a connection of at least
/// [`RECONNECT_RESET_AFTER`] sets `n` back to 0.
///
/// Pure: [`Backoff::next_wait`] takes the random source and the connection's times
/// are arguments, so it is tested without sleeping; [`Reconnect`] uses it with tokio's
/// clock.
///
/// ```
/// use std::time::Duration;
/// use switchboard_client::Backoff;
/// use tokio::time::Instant;
///
/// let mut backoff = Backoff::new();
/// let mut rng = rand::rng();
/// for cap_secs in [1, 2, 4, 8, 16, 32, 64, 120, 120] {
///     assert_eq!(backoff.cap(), Duration::from_secs(cap_secs));
///     assert!(backoff.next_wait(&mut rng) < Duration::from_secs(cap_secs));
/// }
/// // A connection of 10 s keeps the count, one of 60 s resets it.
/// let start = Instant::now();
/// backoff.connected_at(start);
/// assert!(!backoff.lost_at(start + Duration::from_secs(10)));
/// assert_eq!(backoff.cap(), Duration::from_secs(120));
/// backoff.connected_at(start);
/// assert!(backoff.lost_at(start + Duration::from_secs(60)));
/// assert_eq!(backoff.cap(), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed attempts since the last reset: the `n` of the next cap.
    failures: u32,
    /// When the connection now in use was made; `None` while there is none.
    connected: Option<Instant>,
}

impl Backoff {
    /// No failure yet: the next cap is [`RECONNECT_BACKOFF_BASE`].
    pub fn new() -> Self {
        Backoff::default()
    }

    /// Failed attempts counted since the last reset (the `n` of the next cap).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The cap of the next wait: `min(120 s, 1 s × 2^n)`.
    pub fn cap(&self) -> Duration {
        // 2^16 s is far above the cap: no overflow, and the same answer.
        RECONNECT_BACKOFF_BASE
            .saturating_mul(1 << self.failures.min(16))
            .min(RECONNECT_BACKOFF_CAP)
    }

    /// An attempt failed: the wait before the next one, random in `0..`[`cap`]
    /// (whole milliseconds); the count goes up by one.
    ///
    /// [`cap`]: Backoff::cap
    pub fn next_wait<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let cap = self.cap();
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(rng.random_range(0..millis(cap).max(1)))
    }

    /// A connection was made at `at` (tokio's clock).
    pub fn connected_at(&mut self, at: Instant) {
        self.connected = Some(at);
    }

    /// When the connection now in use was made, if there is one.
    pub fn connected_since(&self) -> Option<Instant> {
        self.connected
    }

    /// The connection made at [`connected_at`] was lost at `at`: when it lasted at
    /// least [`RECONNECT_RESET_AFTER`], the count is reset (and `true` is returned).
    /// Without a connection, nothing changes.
    ///
    /// [`connected_at`]: Backoff::connected_at
    pub fn lost_at(&mut self, at: Instant) -> bool {
        let lasted = self
            .connected
            .take()
            .map(|since| at.saturating_duration_since(since));
        let reset = lasted.is_some_and(|lasted| lasted >= RECONNECT_RESET_AFTER);
        if reset {
            self.failures = 0;
        }
        reset
    }

    /// Sets the count back to 0: the next cap is [`RECONNECT_BACKOFF_BASE`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A random wait in `0..limit` (whole milliseconds), zero for a zero limit: the
/// jitter after a lost connection.
pub(crate) fn jitter<R: Rng + ?Sized>(limit: Duration, rng: &mut R) -> Duration {
    match millis(limit) {
        0 => Duration::ZERO,
        limit => Duration::from_millis(rng.random_range(0..limit)),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A wait the contract asks for before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// After a lost connection: `wait` is random in `0..limit`, `limit` the
    /// `reconnect_jitter_ms` of the registry's last answer.
    Jitter {
        /// How long.
        wait: Duration,
        /// The registry's `reconnect_jitter_ms` it was drawn below.
        limit: Duration,
    },
    /// After a failed attempt: `wait` is random in `0..cap`, `cap` being
    /// `min(120 s, 1 s × 2^n)` for the `n` failed attempts before this one.
    Backoff {
        /// How long.
        wait: Duration,
        /// The cap it was drawn below.
        cap: Duration,
    },
}

impl Wait {
    /// How long to wait.
    pub fn duration(self) -> Duration {
        match self {
            Wait::Jitter { wait, .. } | Wait::Backoff { wait, .. } => wait,
        }
    }
}

/// A [`Device`] that keeps the whole reconnect contract (SPEC section 11): before
/// each attempt it waits what is due — nothing the first time, a random jitter below
/// the registry's `reconnect_jitter_ms` after a lost connection, a full-jitter
/// exponential backoff after a failed attempt ([`Backoff`]) — and a connection that
/// lasted 60 s resets the backoff. Each attempt is [`Device::connect`] (ask again per
/// pick, the last good list while the registry is unreachable).
///
/// A device loop: [`Reconnect::attempt`] until it connects, use the connection, tell
/// [`Reconnect::lost`] when it ends, and attempt again; [`Reconnect::due`] says what
/// the next attempt will wait first (to log it). [`Reconnect::connect`] does the
/// attempts of one reconnection for you, up to a bound.
///
/// ```
/// # async fn doc_server() -> Result<(switchboard::app::Running, String), Box<dyn std::error::Error>> {
/// #     let args = switchboard::cli::ServeArgs { no_forward: true, ..Default::default() };
/// #     let toml = "http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"\n[rebalance]\nreconnect_jitter_ms = 100";
/// #     let config = switchboard::config::Config::from_toml(toml, &args)?;
/// #     let server = switchboard::app::start(config).await?;
/// #     let url = format!("http://{}", server.http_addr);
/// #     Ok((server, url))
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (server, url) = doc_server().await?;
/// # let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let backend = echo.local_addr()?.to_string();
/// # let registry = switchboard_client::Registry::builder([url.clone()]).build()?;
/// # registry.register("default", &switchboard_client::Registration::new(backend.clone())).await?;
/// use switchboard_client::{Device, Query, Reconnect, Registry, Wait};
/// let registry = Registry::builder([url]).build()?;
/// let mut reconnect = Reconnect::new(Device::new(registry, Query::new("default")));
/// for _ in 0..2 {
///     // Up to 10 attempts, each after the wait the contract asks for.
///     let (stream, chosen) = reconnect.connect(10).await?;
///     assert_eq!(chosen.address, backend);
///     drop(stream); // the connection was lost:
///     let wait = reconnect.lost(); // the next attempt waits 0..reconnect_jitter_ms first
///     assert!(matches!(wait, Wait::Jitter { limit, .. } if limit.as_millis() == 100));
/// }
/// # server.stop().await?; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Reconnect {
    device: Device,
    backoff: Backoff,
    /// What the next attempt waits first.
    due: Option<Wait>,
}

impl Reconnect {
    /// Reconnects `device`; its first attempt waits nothing.
    pub fn new(device: Device) -> Self {
        Reconnect {
            device,
            backoff: Backoff::new(),
            due: None,
        }
    }

    /// The device it connects.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backoff: its count of failed attempts and the next cap.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// What the next attempt waits before it connects: `None` the first time and
    /// right after a wait; the jitter after [`Reconnect::lost`]; the backoff after a
    /// failed attempt.
    pub fn due(&self) -> Option<Wait> {
        self.due
    }

    /// The connection of the last successful attempt was lost (now): a connection
    /// that lasted [`RECONNECT_RESET_AFTER`] resets the backoff, and the next attempt
    /// waits a random time in `0..reconnect_jitter_ms` of the registry's last answer
    /// (5 s before any), returned here. Calling it without a connection draws the
    /// jitter all the same.
    pub fn lost(&mut self) -> Wait {
        self.backoff.lost_at(Instant::now());
        let limit = self.device.registry().reconnect_jitter();
        let wait = Wait::Jitter {
            wait: jitter(limit, &mut rand::rng()),
            limit,
        };
        self.due = Some(wait);
        wait
    }

    /// Sleeps what is due (see [`Reconnect::due`]), then nothing is. Cancel-safe: a
    /// wait dropped before its end is still due, in full.
    pub async fn wait(&mut self) {
        if let Some(wait) = self.due {
            tokio::time::sleep(wait.duration()).await;
            self.due = None;
        }
    }

    /// One attempt: waits what is due, then [`Device::connect`]. A success starts the
    /// 60 s that reset the backoff; a failure draws the next backoff, which
    /// [`Reconnect::due`] then shows. Called again while the last attempt's
    /// connection was not reported [`lost`](Reconnect::lost), it counts as lost now.
    ///
    /// # Errors
    /// As [`Device::connect`]; the wait before the next attempt is drawn either way.
    pub async fn attempt(&mut self) -> Result<(TcpStream, Server)> {
        if self.backoff.connected_since().is_some() {
            self.lost();
        }
        self.wait().await;
        match self.device.connect().await {
            Ok(connected) => {
                self.backoff.connected_at(Instant::now());
                Ok(connected)
            }
            Err(err) => {
                let cap = self.backoff.cap();
                let wait = self.backoff.next_wait(&mut rand::rng());
                self.due = Some(Wait::Backoff { wait, cap });
                Err(err)
            }
        }
    }

    /// Attempts until one connects, at most `max_attempts` times (at least once),
    /// each after the wait the contract asks for (see [`Reconnect::attempt`]). After
    /// a failure the backoff stays due, so calling it again goes on with the contract.
    ///
    /// # Errors
    /// The last attempt's error after `max_attempts` failures; at once, an error that
    /// trying again cannot mend ([`Error::is_transient`] is false: a refused token, a
    /// bad request).
    pub async fn connect(&mut self, max_attempts: u32) -> Result<(TcpStream, Server)> {
        let mut failed: Option<Error> = None;
        for _ in 0..max_attempts.max(1) {
            match self.attempt().await {
                Ok(connected) => return Ok(connected),
                Err(err) if !err.is_transient() => return Err(err),
                Err(err) => failed = Some(err),
            }
        }
        Err(failed.expect("at least one attempt was made"))
    }
}

#[cfg(test)]
mod tests;
