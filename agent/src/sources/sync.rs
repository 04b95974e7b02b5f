//! How fresh the source's view of the cluster is, readable from any thread (metrics, the
//! admin socket): lock-free atomics, written by the source.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sync health of a source. For the API server, each watch (Namespaces, Pods,
/// NetworkPolicies, Node, Services, ClusterNetworkPolicies) reports whether its last attempt succeeded; while any is failing,
/// the enforced state is as old as the moment the first one failed.
#[derive(Debug, Default)]
pub struct SyncState {
    synced: AtomicBool,
    /// Bit `i` set: watch `i` is failing.
    failing: AtomicU32,
    /// Unix milliseconds: last moment every watch was known healthy.
    last_healthy_ms: AtomicU64,
    /// Watch errors seen (each is retried with backoff).
    errors: AtomicU64,
    /// Complete (re-)lists finished, the first sync included.
    lists: AtomicU64,
}

impl SyncState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first complete state is known (and about to be enforced).
    pub fn mark_synced(&self) {
        self.last_healthy_ms.store(now_ms(), Ordering::Relaxed);
        self.synced.store(true, Ordering::Release);
    }

    /// Watch `watch` delivered something: it is healthy again.
    pub fn ok(&self, watch: u32) {
        let before = self.failing.fetch_and(!(1 << watch), Ordering::AcqRel);
        if before & !(1 << watch) == 0 {
            self.last_healthy_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Watch `watch` failed; returns whether it was the first of the watches to fail.
    pub fn failed(&self, watch: u32) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let before = self.failing.load(Ordering::Acquire);
        if before == 0 {
            self.last_healthy_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.failing.fetch_or(1 << watch, Ordering::AcqRel) == 0
    }

    pub fn listed(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether every watch is healthy.
    pub fn is_healthy(&self) -> bool {
        self.failing.load(Ordering::Acquire) == 0
    }

    /// Seconds the enforced state may lag the cluster: 0 while every watch is healthy, the
    /// time since the first failure otherwise; None before the first sync.
    pub fn seconds_since_sync(&self) -> Option<f64> {
        if !self.is_synced() {
            return None;
        }
        if self.is_healthy() {
            return Some(0.0);
        }
        let since = now_ms().saturating_sub(self.last_healthy_ms.load(Ordering::Relaxed));
        Some(since as f64 / 1000.0)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_from_the_first_failure_until_all_recover() {
        let state = SyncState::new();
        assert_eq!(state.seconds_since_sync(), None);
        state.mark_synced();
        assert_eq!(state.seconds_since_sync(), Some(0.0));
        assert!(state.failed(1));
        assert!(!state.failed(2), "only the first failure starts the clock");
        assert!(!state.is_healthy());
        state.ok(1);
        assert!(!state.is_healthy(), "watch 2 still fails");
        assert!(state.seconds_since_sync().is_some_and(|s| s >= 0.0));
        state.ok(2);
        assert_eq!(state.seconds_since_sync(), Some(0.0));
        assert_eq!(state.errors(), 2);
    }
}
