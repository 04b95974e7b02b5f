//! Folds events within a window. Identical events: the first is reported at once, the
//! repeats are counted and reported as one event with the count when the window closes.
//! Floods of distinct flow events of one shape (`flood`): beyond a threshold per window they
//! are counted into one report with their spread. So a flood costs a few lines per window
//! and nothing is hidden.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::flood::{self, Flood};
use super::record::{now_unix_ms, Event, Payload};

/// More distinct keys than this in one window are reported one by one, unaggregated, so a
/// flood of distinct events cannot grow the table without bound.
pub const MAX_KEYS: usize = 16_384;
/// Shapes followed at once; events of further shapes are only folded when identical.
pub const MAX_SHAPES: usize = 1024;

struct Window {
    opened: Instant,
    repeats: u64,
    event: Event,
}

pub struct Aggregator {
    window: Duration,
    /// Distinct events of one shape reported per window before the rest are folded (0: never
    /// fold distinct events).
    flood_threshold: usize,
    open: HashMap<String, Window>,
    floods: HashMap<String, Flood>,
    /// Aggregates of stale windows replaced before a flush, reported by the next flush.
    closed: Vec<Event>,
}

impl Aggregator {
    pub fn new(window: Duration, flood_threshold: usize) -> Self {
        Self {
            window,
            flood_threshold,
            open: HashMap::new(),
            floods: HashMap::new(),
            closed: Vec::new(),
        }
    }

    /// Takes an event; returns it when it must be reported now (the first of its kind in the
    /// window), or None when it was folded into an open window or flood.
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
        if self.fold_flood(&event, now) {
            return None;
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

    /// Counts a new distinct flow event against its shape; true when it was folded.
    fn fold_flood(&mut self, event: &Event, now: Instant) -> bool {
        let Payload::Flow(record) = &event.payload else {
            return false;
        };
        if self.flood_threshold == 0 {
            return false;
        }
        let (shape, port, ip) = flood::shape(record);
        let shape_key = serde_json::to_string(&shape).unwrap_or_default();
        if !self.floods.contains_key(&shape_key) && self.floods.len() >= MAX_SHAPES {
            return false;
        }
        let window = self.window;
        let flood = self
            .floods
            .entry(shape_key)
            .or_insert_with(|| Flood::new(shape.clone(), now));
        if now.duration_since(flood.opened) >= window {
            let stale = std::mem::replace(flood, Flood::new(shape, now));
            self.closed.extend(stale.report());
        }
        flood.seen += 1;
        if flood.seen <= self.flood_threshold {
            return false;
        }
        flood.fold(port, ip, event.count);
        true
    }

    /// Closes the windows older than the window length; returns one aggregate per window that
    /// saw repeats and one report per flood that folded events.
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
        let expired: Vec<String> = self
            .floods
            .iter()
            .filter(|(_, flood)| now.duration_since(flood.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(flood) = self.floods.remove(&key) {
                out.extend(flood.report());
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
        let mut agg = Aggregator::new(Duration::from_secs(1), 16);
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
        let mut agg = Aggregator::new(Duration::ZERO, 16);
        let now = Instant::now();
        assert!(agg.observe(detection("x"), now).is_some());
        assert!(agg.observe(detection("x"), now).is_some());
        assert!(agg.flush(now).is_empty());
    }

    #[test]
    fn expired_window_not_yet_flushed_restarts() {
        let start = Instant::now();
        let mut agg = Aggregator::new(Duration::from_millis(100), 16);
        assert!(agg.observe(detection("x"), start).is_some());
        assert!(agg.observe(detection("x"), start + Duration::from_millis(150)).is_some());
        assert!(agg.observe(detection("x"), start + Duration::from_millis(160)).is_none());
        let closed = agg.flush(start + Duration::from_millis(300));
        assert_eq!(closed[0].count, 1);
    }

    fn deny_to(pod: &str, ip: &str, port: u16) -> Event {
        use crate::events::deny::{DenyRecord, End};
        let end = |tenant: &str, namespace: &str, pod: &str, ip: &str, port: u16| End {
            tenant: Some(tenant.into()),
            namespace: Some(namespace.into()),
            pod: Some(pod.into()),
            ip: ip.parse().ok(),
            port,
        };
        Event::new(Payload::Flow(DenyRecord {
            verdict: "deny",
            direction: "egress",
            hook: "connect",
            protocol: "TCP".into(),
            rule: "tenant-floor",
            policies: Vec::new(),
            src: end("beta", "b1", "scanner", "10.0.0.1", 0),
            dst: end("alpha", "a1", pod, ip, port),
        }))
    }

    #[test]
    fn a_scan_of_many_ports_and_peers_folds_into_one_counted_report() {
        let start = Instant::now();
        let mut agg = Aggregator::new(Duration::from_secs(1), 4);
        let mut reported = 0;
        for port in 1000..3000u16 {
            let (pod, ip) = if port % 2 == 0 {
                ("web", "10.0.0.2")
            } else {
                ("db", "10.0.0.3")
            };
            reported += usize::from(agg.observe(deny_to(pod, ip, port), start).is_some());
        }
        assert_eq!(
            reported, 4,
            "the first events of the shape are reported one by one"
        );
        // Another shape (another remote namespace) is its own.
        let mut other = deny_to("web", "10.0.1.2", 80);
        if let Payload::Flow(record) = &mut other.payload {
            record.dst.namespace = Some("a2".into());
        }
        assert!(agg.observe(other, start).is_some());
        let reports = agg.flush(start + Duration::from_secs(1));
        assert_eq!(reports.len(), 1, "{reports:?}");
        let flood = &reports[0];
        assert_eq!((flood.count, flood.aggregated), (1996, true));
        let spread = flood.spread.as_ref().expect("spread");
        assert_eq!(
            (
                spread.remote_ports,
                spread.remote_port_min,
                spread.remote_port_max,
                spread.remote_addresses
            ),
            (1996, 1004, 2999, 2)
        );
        let json: serde_json::Value = serde_json::from_str(&flood.to_json()).expect("json");
        assert_eq!(json["dst"]["namespace"], "a1", "{json}");
        assert!(
            json["dst"]["pod"].is_null() && json["dst"]["ip"].is_null(),
            "{json}"
        );
        assert_eq!(json["spread"]["remote_ports"], 1996, "{json}");
        // Next window: reported one by one again.
        assert!(agg
            .observe(
                deny_to("web", "10.0.0.2", 5),
                start + Duration::from_secs(2)
            )
            .is_some());
    }

    #[test]
    fn a_quiet_pod_below_the_threshold_is_never_folded() {
        let start = Instant::now();
        let mut agg = Aggregator::new(Duration::from_secs(1), 4);
        for second in 0..20u64 {
            let at = start + Duration::from_secs(second);
            assert!(agg
                .observe(deny_to("web", "10.0.0.2", 20_000 + second as u16), at)
                .is_some());
            assert!(agg.flush(at).iter().all(|e| e.spread.is_none()));
        }
    }
}
