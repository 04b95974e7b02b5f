//! Folds identical events within a window: the first is reported at once, the repeats are
//! counted and reported as one event with the count when the window closes. So a flood
//! costs two lines per window and nothing is hidden.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::record::{now_unix_ms, Event};

/// More distinct keys than this in one window are reported one by one, unaggregated, so a
/// flood of distinct events cannot grow the table without bound.
pub const MAX_KEYS: usize = 16_384;

struct Window {
    opened: Instant,
    repeats: u64,
    event: Event,
}

pub struct Aggregator {
    window: Duration,
    open: HashMap<String, Window>,
    /// Aggregates of stale windows replaced before a flush, reported by the next flush.
    closed: Vec<Event>,
}

impl Aggregator {
    pub fn new(window: Duration) -> Self {
        Self { window, open: HashMap::new(), closed: Vec::new() }
    }

    /// Takes an event; returns it when it must be reported now (the first of its kind in the
    /// window), or None when it was folded into an open window.
    pub fn observe(&mut self, event: Event, now: Instant) -> Option<Event> {
        if self.window.is_zero() {
            return Some(event);
        }
        let key = event.key();
        if let Some(window) = self.open.get_mut(&key) {
            if now.duration_since(window.opened) < self.window {
                window.repeats += event.count;
                return None;
            }
        }
        if self.open.len() >= MAX_KEYS && !self.open.contains_key(&key) {
            return Some(event);
        }
        // A stale window of the same key (not flushed yet) is replaced; its repeats are kept
        // for the next flush.
        if let Some(stale) = self.open.insert(key, Window { opened: now, repeats: 0, event: event.clone() }) {
            self.closed.extend(aggregate(stale));
        }
        Some(event)
    }

    /// Closes the windows older than the window length; returns one aggregate per window that
    /// saw repeats.
    pub fn flush(&mut self, now: Instant) -> Vec<Event> {
        let window = self.window;
        let mut out = std::mem::take(&mut self.closed);
        let expired: Vec<String> =
            self.open.iter().filter(|(_, open)| now.duration_since(open.opened) >= window).map(|(k, _)| k.clone()).collect();
        for key in expired {
            if let Some(open) = self.open.remove(&key) {
                out.extend(aggregate(open));
            }
        }
        out
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

fn aggregate(window: Window) -> Option<Event> {
    (window.repeats > 0).then(|| {
        let mut event = window.event;
        event.count = window.repeats;
        event.aggregated = true;
        event.time_unix_ms = now_unix_ms();
        event
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::{Detection, Payload};

    fn detection(id: &str) -> Event {
        Event::new(Payload::Detection(Detection {
            id: id.into(),
            mode: "audit".into(),
            tenant: Some("a".into()),
            namespace: Some("n".into()),
            pod: Some("p".into()),
            message: "m".into(),
            ..Detection::default()
        }))
    }

    #[test]
    fn first_is_reported_repeats_are_counted_at_window_end() {
        let start = Instant::now();
        let mut agg = Aggregator::new(Duration::from_secs(1));
        assert!(agg.observe(detection("x"), start).is_some());
        for i in 0..99 {
            assert!(agg.observe(detection("x"), start + Duration::from_millis(i)).is_none());
        }
        assert!(agg.observe(detection("y"), start).is_some(), "a different event is its own");
        assert!(agg.flush(start + Duration::from_millis(500)).is_empty(), "window still open");
        let closed = agg.flush(start + Duration::from_secs(1));
        assert_eq!(closed.len(), 1, "only the window with repeats reports: {closed:?}");
        assert_eq!(closed[0].count, 99);
        assert!(closed[0].aggregated);
        assert_eq!(agg.open_windows(), 0);
        // After the window, the same event is reported at once again.
        assert!(agg.observe(detection("x"), start + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn zero_window_reports_everything() {
        let mut agg = Aggregator::new(Duration::ZERO);
        let now = Instant::now();
        assert!(agg.observe(detection("x"), now).is_some());
        assert!(agg.observe(detection("x"), now).is_some());
        assert!(agg.flush(now).is_empty());
    }

    #[test]
    fn expired_window_not_yet_flushed_restarts() {
        let start = Instant::now();
        let mut agg = Aggregator::new(Duration::from_millis(100));
        assert!(agg.observe(detection("x"), start).is_some());
        assert!(agg.observe(detection("x"), start + Duration::from_millis(150)).is_some());
        assert!(agg.observe(detection("x"), start + Duration::from_millis(160)).is_none());
        let closed = agg.flush(start + Duration::from_millis(300));
        assert_eq!(closed[0].count, 1);
    }
}
