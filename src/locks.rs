//! The one poison-tolerant mutex lock every module uses. Owns nothing else.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the data even if a thread panicked while holding it: every
/// mutex here guards state that a panic cannot leave in a shape worse than stopping
/// the whole process would (a cache, a batch kept for retry, a set of ids).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
