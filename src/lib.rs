//! Switchboard balances long-lived TCP connections across a fleet of servers.
//!
//! Backends register with the HTTP registry and heartbeat their live connection count;
//! smart clients ask `GET /servers` for a ranked list; legacy devices go through the
//! fallback forwarder. See `ARCHITECTURE.md` for where each part lives.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod forwarder;
pub mod history;
pub mod hub;
pub mod lease;
pub mod locks;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod reload;
pub mod rlimit;
pub mod simulation;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod upkeep;
