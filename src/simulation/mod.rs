//! Rebalancing simulated at internet scale on the registry's real core
//! ([`crate::registry::ServiceTable`]) with simulated time: servers that heartbeat
//! their true counts and honour `shed`, devices that reconnect after a jitter through
//! the real ranking. Answers, per heartbeat round, the spread, the share moved, the
//! `/servers` rate and the reconnect fairness, and judges them against the goals.
//!
//! `cargo bench --bench fleet_sim` runs it at 1,000 servers and 10 million devices;
//! a test runs a small version.

mod fleet;
mod report;
mod scenario;

pub use fleet::{Fleet, Settings, TICK_MS};
pub use report::{Goal, Phase, Round};
pub use scenario::{GOAL_TOLERANCE, QUIET_ROUNDS, rolling_restart, scale_out, zone_outage};
