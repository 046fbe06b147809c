//! The blocking watch: a stream of ranked lists, one each time the service's version
//! changes, costing one held request at a time on the registry.

use std::time::Duration;

use crate::error::Result;
use crate::registry::{Query, Registry, ServerList};

/// The longest a blocking query is held by the registry (SPEC: `wait_secs` 1..=60).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Watches a query's list. The first [`Watch::next`] answers at once; each later one
/// when the version changed.
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
/// use switchboard_client::{Query, Registration, Registry, Watch};
/// let registry = Registry::builder([url]).build()?;
/// let mut watch = Watch::new(registry.clone(), Query::new("default"));
/// let empty = watch.next().await?;
/// assert!(empty.servers.is_empty());
/// registry.register("default", &Registration::new("127.0.0.1:6666")).await?;
/// let one = watch.next().await?; // held until the membership changed
/// assert_eq!(one.servers.len(), 1);
/// # server.stop().await?; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Watch {
    registry: Registry,
    query: Query,
    wait: Duration,
    seen: Option<u64>,
}

impl Watch {
    /// A watch of `query`, holding each request up to [`MAX_WAIT`].
    pub fn new(registry: Registry, query: Query) -> Self {
        Watch {
            registry,
            query,
            wait: MAX_WAIT,
            seen: None,
        }
    }

    /// Sets how long each held request may wait (1 s..=60 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_secs(1), MAX_WAIT);
        self
    }

    /// The next list: at once the first time, then when the version differs from the
    /// last one returned. While nothing changes this keeps one request held at a
    /// time; a cached list (registry unreachable) is returned as soon as it differs.
    ///
    /// # Errors
    /// The registry's error (with nothing cached); call again to go on.
    pub async fn next(&mut self) -> Result<ServerList> {
        loop {
            let since = self.seen.map(|v| (v, self.wait));
            let list = self.registry.resolve_since(&self.query, since).await?;
            if self.seen != Some(list.version) {
                self.seen = Some(list.version);
                return Ok(list);
            }
            if list.from_cache {
                // No node answers: do not spin on the cache.
                tokio::time::sleep(self.wait.min(Duration::from_secs(1))).await;
            }
        }
    }
}
