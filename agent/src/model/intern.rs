//! One shared copy of each equal value the model holds many times: label strings and sets
//! (`labels.rs`), a pod's container ports. Entries nothing else uses any more are dropped
//! when the set has doubled since the last sweep, so churn (a new `pod-template-hash` per
//! rollout) does not accumulate.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct Interner<T: ?Sized> {
    pub(super) items: HashSet<Arc<T>>,
    sweep_at: usize,
}

pub const FIRST_SWEEP: usize = 4096;

/// The shared copy of `value` in `interner`, made by `make` if there is none.
pub fn shared<T: ?Sized + Eq + Hash>(interner: &Mutex<Option<Interner<T>>>, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
    let mut guard = interner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let interner = guard.get_or_insert_with(|| Interner { items: HashSet::new(), sweep_at: FIRST_SWEEP });
    if let Some(shared) = interner.items.get(value) {
        return Arc::clone(shared);
    }
    if interner.items.len() >= interner.sweep_at {
        interner.items.retain(|shared| Arc::strong_count(shared) > 1);
        interner.items.shrink_to_fit();
        interner.sweep_at = (interner.items.len() * 2).max(FIRST_SWEEP);
    }
    let shared = make();
    interner.items.insert(Arc::clone(&shared));
    shared
}
