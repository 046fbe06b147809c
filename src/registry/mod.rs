//! The registry's pure core: instances, ranking, the affinity ring, liveness and the
//! per-service table. No I/O, no clocks, no async: everything is deterministic and
//! unit-tested here; `hub` wraps it with locks, the store and the clock.

pub mod liveness;
pub mod model;
pub mod rank;
pub mod ring;
pub mod table;
pub mod validate;

pub use model::{Instance, InstanceSpec, LeaseHash, Millis, Origin, State};
pub use rank::RebalancePolicy;
pub use table::ServiceTable;
