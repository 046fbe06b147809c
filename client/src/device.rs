//! The device side: resolve, connect to the first server that answers within a
//! connect timeout (asking again after a failure), keep the last good list for when the
//! registry is unreachable, and wait a random jitter before reconnecting. The backoff
//! between failed attempts is `reconnect.rs`'s.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::registry::{Query, Registry, Server};

/// How long one connect attempt may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A device of one query: connects to the best server that answers, and reconnects
/// after a jitter when its connection is lost. [`Reconnect`](crate::Reconnect) adds
/// the backoff between failed attempts, for a device loop that keeps the whole
/// reconnect contract.
///
/// ```
/// # async fn doc_server() -> Result<(switchboard::app::Running, String), Box<dyn std::error::Error>> {
/// #     let args = switchboard::cli::ServeArgs { no_forward: true, ..Default::default() };
/// #     let toml = "http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"";
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
/// use switchboard_client::{Device, Query, Registry};
/// let registry = Registry::builder([url]).build()?;
/// let device = Device::new(registry, Query::new("default").key("device-42"));
/// let (stream, chosen) = device.connect().await?;
/// assert_eq!(chosen.address, backend);
/// drop(stream); // the connection was lost:
/// let (_again, _) = device.reconnect().await?; // waits 0..reconnect_jitter_ms first
/// # server.stop().await?; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Device {
    registry: Registry,
    query: Query,
    connect_timeout: Duration,
}

impl Device {
    /// A device resolving `query` with [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(registry: Registry, query: Query) -> Self {
        Device {
            registry,
            query,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The registry it resolves with.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets how long one connect attempt may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Resolves and connects to the first server of the answer. When it does not
    /// answer, resolves again and tries the new answer's first server not yet tried,
    /// as many times as the first answer had servers. Uses the last good list while
    /// the registry is unreachable (then the servers are tried in its order).
    ///
    /// Why ask again rather than take the next server of the same list: each answer
    /// counts a hand-out for its first server only. A dead server stays in the answers
    /// until its TTL passes; if every device that met it took the same second server
    /// uncounted, that one server would take a whole reconnect storm.
    ///
    /// # Errors
    /// [`Error::Connect`] when no server answered; the registry's error when there
    /// was no list at all.
    pub async fn connect(&self) -> Result<(TcpStream, Server)> {
        let mut list = self.registry.resolve(&self.query).await?;
        let attempts = list.servers.len();
        let mut failures: Vec<(String, String)> = Vec::new();
        for attempt in 0..attempts {
            if attempt > 0
                && let Ok(fresh) = self.registry.resolve(&self.query).await
            {
                list = fresh;
            }
            let tried = |s: &&Server| failures.iter().any(|(address, _)| *address == s.address);
            let Some(server) = list.servers.iter().find(|s| !tried(s)).cloned() else {
                break;
            };
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&server.address))
                .await
            {
                Ok(Ok(stream)) => return Ok((stream, server)),
                Ok(Err(err)) => failures.push((server.address, err.to_string())),
                Err(_) => failures.push((
                    server.address,
                    format!("no answer within {:?}", self.connect_timeout),
                )),
            }
        }
        Err(Error::Connect(if failures.is_empty() {
            format!("service {} has no live server", self.query.service)
        } else {
            let failures: Vec<String> = failures
                .iter()
                .map(|(address, err)| format!("{address}: {err}"))
                .collect();
            failures.join("; ")
        }))
    }

    /// After a lost connection: waits a random time in `0..reconnect_jitter_ms` of the
    /// last answer (so a fleet does not reconnect all at once), then connects.
    ///
    /// # Errors
    /// As [`Device::connect`].
    pub async fn reconnect(&self) -> Result<(TcpStream, Server)> {
        tokio::time::sleep(self.registry.reconnect_delay()).await;
        self.connect().await
    }
}
