//! Client of the Switchboard registry, for the two sides of a fleet.
//!
//! - **Backends** (servers devices connect to) [`Backend::start`]: register, then
//!   heartbeat the live connection count the application owns, in the background;
//!   register again when the registry forgot them; back off while it is unreachable;
//!   receive `shed` hints; drain and deregister on shutdown.
//! - **Devices** [`Device`]: resolve a ranked list, connect to the first server that
//!   answers, use the last good list while the registry is unreachable, wait a random
//!   jitter before reconnecting; [`Reconnect`] keeps the whole reconnect contract
//!   (SPEC section 11) in a device loop: the jitter after a lost connection,
//!   full-jitter exponential backoff after a failed attempt (random in
//!   `0..min(120 s, 1 s × 2^n)`, [`Backoff`]), reset by 60 s connected;
//!   [`Watch`] follows membership changes.
//!
//! A [`Registry`] handle takes one URL per registry node and fails over between
//! them, remembering which answered. Depends on nothing of the server crate.
//!
//! ```
//! # async fn doc_server() -> Result<(switchboard::app::Running, String), Box<dyn std::error::Error>> {
//! #     let args = switchboard::cli::ServeArgs { no_forward: true, ..Default::default() };
//! #     let toml = "http = \"127.0.0.1:0\"\ndb = \"sqlite::memory:\"";
//! #     let config = switchboard::config::Config::from_toml(toml, &args)?;
//! #     let server = switchboard::app::start(config).await?;
//! #     let url = format!("http://{}", server.http_addr);
//! #     Ok((server, url))
//! # }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (server, url) = doc_server().await?;
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicU64;
//! use std::time::Duration;
//! use switchboard_client::{Backend, Device, Query, Registration, Registry};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?.to_string();
//! let registry = Registry::builder([url]).build()?;
//!
//! // A backend joins...
//! let live = Arc::new(AtomicU64::new(0));
//! let mut backend = Backend::start(registry.clone(), "default", Registration::new(address.clone()), live);
//! backend.registered(Duration::from_secs(5)).await?;
//!
//! // ...and a device connects.
//! let device = Device::new(registry, Query::new("default"));
//! let (_stream, chosen) = device.connect().await?;
//! assert_eq!(chosen.address, address);
//! backend.shutdown().await?;
//! # server.stop().await?; Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod device;
mod error;
mod reconnect;
mod registry;
mod tls;
mod watch;

pub use backend::{BACKOFF_MAX, BACKOFF_MIN, Backend, ConnectionCount, SHED_QUEUE};
pub use device::{DEFAULT_CONNECT_TIMEOUT, Device};
pub use error::{Error, Result};
pub use reconnect::{
    Backoff, RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP, RECONNECT_RESET_AFTER, Reconnect, Wait,
};
pub use registry::{
    Beat, DEFAULT_RECONNECT_JITTER_MS, DEFAULT_REQUEST_TIMEOUT, Lease, Query, Registration,
    Registry, RegistryBuilder, Server, ServerList,
};
pub use watch::{MAX_WAIT, Watch};
