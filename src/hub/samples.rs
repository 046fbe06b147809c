//! The hub's side of the dashboard's history: each service's table handed over in
//! turn, under its own lock, for one sample. Keeps nothing (`history` does); no HTTP,
//! no store.

use super::Hub;
use crate::registry::{Millis, ServiceTable};

impl Hub {
    /// Hands every service's table to `each`, one at a time under its lock, with
    /// liveness time now. A version the call moves wakes blocking queries as any
    /// change does (sampling moves none: it only takes the activity counts).
    pub fn each_table(&self, each: &mut dyn FnMut(&mut ServiceTable, Millis)) {
        let now = self.now();
        for slot in self.all_slots() {
            slot.apply(|table| each(table, now));
        }
    }
}
