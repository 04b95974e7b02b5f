//! The pipeline task: decoded kernel records (and detections) come in through the fair
//! buffer (`queue`), are named from the current model, aggregated, and fanned out to every
//! sink and to the live observers (`moat observe`). Nothing is dropped silently: every loss
//! is counted for its owner (`losses`), and each summary period the pipeline reports what was
//! lost since the last one, per owner, as `dropped` events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use super::aggregate::Aggregator;
use super::deny::DenyRecord;
use super::losses::{Losses, Named};
pub use super::queue::Input;
use super::queue::FairQueue;
use super::record::{Event, Payload};
use crate::compiler::Index;

/// Events taken from the buffer before the pipeline looks at its timer again.
const BATCH: usize = 256;

/// Closes the buffer when the last submitter goes.
struct Closer(Arc<FairQueue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Where producers hand events to the pipeline. Never blocks: a full buffer counts a loss.
#[derive(Clone)]
pub struct Submitter {
    queue: Arc<FairQueue>,
    _closer: Arc<Closer>,
}

impl Submitter {
    pub fn submit(&self, input: Input) {
        self.queue.push(input);
    }

    /// Counts a kernel record that could not be decoded.
    pub fn undecodable(&self) {
        self.queue.undecodable();
    }
}

/// A destination of events. Sinks run on the pipeline task and must not block on I/O that
/// can stall (a network sink queues, and counts what it has to drop, itself).
pub trait Sink: Send {
    fn emit(&mut self, event: &Event);
}

/// How the pipeline buffers, folds and reports.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Flow events buffered in all (shared fairly among tenants).
    pub buffer: usize,
    /// Detections buffered.
    pub detection_buffer: usize,
    pub window: Duration,
    pub flood_threshold: usize,
    /// How often losses are summarized into `dropped` events.
    pub summary_period: Duration,
}

pub struct Pipeline {
    queue: Arc<FairQueue>,
    index: watch::Receiver<Arc<Index>>,
    aggregator: Aggregator,
    settings: Settings,
    sinks: Vec<Box<dyn Sink>>,
    hub: broadcast::Sender<Arc<Event>>,
    losses: Arc<Losses>,
}

/// Creates the pipeline and the handle producers submit to.
pub fn new(
    settings: Settings,
    index: watch::Receiver<Arc<Index>>,
    sinks: Vec<Box<dyn Sink>>,
    hub: broadcast::Sender<Arc<Event>>,
    losses: Arc<Losses>,
) -> (Pipeline, Submitter) {
    let queue = Arc::new(FairQueue::new(
        settings.buffer,
        settings.detection_buffer,
        losses.clone(),
    ));
    let aggregator = Aggregator::new(settings.window, settings.flood_threshold);
    let submitter = Submitter {
        queue: queue.clone(),
        _closer: Arc::new(Closer(queue.clone())),
    };
    (
        Pipeline {
            queue,
            index,
            aggregator,
            settings,
            sinks,
            hub,
            losses,
        },
        submitter,
    )
}

impl Pipeline {
    /// Runs until every submitter is gone and the buffer is drained.
    pub async fn run(mut self) {
        let period = (self.settings.window / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_summary = Instant::now();
        let queue = self.queue.clone();
        loop {
            tokio::select! {
                input = queue.next() => match input {
                    Some(input) => {
                        self.take(input);
                        for _ in 1..BATCH {
                            let Some(input) = queue.pop() else { break };
                            self.take(input);
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    for event in self.aggregator.flush(Instant::now()) {
                        self.emit(event);
                    }
                    if last_summary.elapsed() >= self.settings.summary_period {
                        last_summary = Instant::now();
                        self.summarize_losses();
                    }
                }
            }
        }
        for event in self.aggregator.flush(Instant::now() + self.settings.window) {
            self.emit(event);
        }
        self.summarize_losses();
    }

    fn take(&mut self, input: Input) {
        let payload = match input {
            Input::Deny(raw) => Payload::Flow(DenyRecord::from_event(&raw, &self.index.borrow())),
            Input::Guard(raw) => match super::detection::decode(&raw, &self.index.borrow()) {
                Some(detection) => Payload::Detection(detection),
                None => return,
            },
            Input::Detection(detection) => Payload::Detection(detection),
        };
        if let Some(event) = self.aggregator.observe(Event::new(payload), Instant::now()) {
            self.emit(event);
        }
    }

    /// One `dropped` event per owner, kind, stage and reason that lost events since the last.
    fn summarize_losses(&mut self) {
        self.losses.poll_kernel();
        let index = self.index.borrow().clone();
        for (key, count) in self.losses.unreported() {
            let mut event = Event::new(Payload::Dropped(Named::new(&key, Some(&index))));
            event.count = count;
            self.emit(event);
        }
    }

    fn emit(&mut self, event: Event) {
        for sink in &mut self.sinks {
            sink.emit(&event);
        }
        // No observer connected is not a loss.
        let _ = self.hub.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::losses::{Kind, LossKey, Owner, Reason};
    use crate::events::record::Detection;
    use moat_common::event::{FlowEvent, EVENT_KIND_DENY};
    use std::sync::Mutex;

    struct Collect(Arc<Mutex<Vec<Event>>>);
    impl Sink for Collect {
        fn emit(&mut self, event: &Event) {
            self.0.lock().map(|mut v| v.push(event.clone())).unwrap_or(());
        }
    }

    fn detection() -> Input {
        Input::Detection(Detection {
            id: "d".into(),
            mode: "audit".into(),
            ..Detection::default()
        })
    }

    fn settings(buffer: usize) -> Settings {
        Settings {
            buffer,
            detection_buffer: buffer,
            window: Duration::from_millis(100),
            flood_threshold: 16,
            summary_period: Duration::from_secs(1),
        }
    }

    fn start(settings: Settings) -> (Pipeline, Submitter, Arc<Mutex<Vec<Event>>>, Arc<Losses>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (_index_tx, index_rx) = watch::channel(Arc::new(Index::default()));
        let (hub, _) = broadcast::channel(16);
        let losses = Arc::new(Losses::default());
        let (pipeline, submitter) = new(
            settings,
            index_rx,
            vec![Box::new(Collect(seen.clone()))],
            hub,
            losses.clone(),
        );
        (pipeline, submitter, seen, losses)
    }

    #[tokio::test]
    async fn full_buffer_is_counted_reported_and_repeats_are_aggregated() {
        let (pipeline, submitter, seen, losses) = start(settings(10));
        for _ in 0..25 {
            submitter.submit(detection());
        }
        assert_eq!(losses.by_stage(), (0, 15));
        drop(submitter);
        pipeline.run().await;
        let seen = seen.lock().unwrap();
        let counts: Vec<(&str, u64, bool)> = seen
            .iter()
            .map(|e| {
                let kind = match &e.payload {
                    Payload::Detection(_) => "detection",
                    Payload::Dropped(_) => "dropped",
                    Payload::Flow(_) => "flow",
                };
                (kind, e.count, e.aggregated)
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                ("detection", 1, false),
                ("detection", 9, true),
                ("dropped", 15, false)
            ]
        );
        let Payload::Dropped(dropped) = &seen[2].payload else {
            unreachable!()
        };
        assert_eq!(
            (dropped.events, dropped.stage, dropped.reason),
            ("detection", "userspace", "queue-full")
        );
    }

    #[tokio::test]
    async fn a_flooding_tenant_loses_its_own_events_only() {
        // All at once here: folding floods would fold the quiet tenant's too.
        let (pipeline, submitter, seen, losses) = start(Settings {
            flood_threshold: 0,
            ..settings(64)
        });
        let deny = |tenant: u64, port: u16| {
            Input::Deny(FlowEvent {
                kind: EVENT_KIND_DENY,
                local_tenant: tenant,
                remote_port: port,
                ..FlowEvent::default()
            })
        };
        for port in 0..5000u16 {
            submitter.submit(deny(2, port));
            if port % 250 == 0 {
                submitter.submit(deny(1, 20_000 + port));
            }
        }
        drop(submitter);
        pipeline.run().await;
        let quiet = LossKey::userspace(Owner::Tenant(1), Kind::Deny, Reason::QueueFull);
        let noisy = LossKey::userspace(Owner::Tenant(2), Kind::Deny, Reason::QueueFull);
        let totals = losses.totals();
        assert!(!totals.iter().any(|(key, _)| *key == quiet), "{totals:?}");
        assert!(
            totals.iter().any(|(key, n)| *key == noisy && *n > 0),
            "{totals:?}"
        );
        // Every quiet event was reported, on its own (tenant 1 has no name: "0x1").
        let seen = seen.lock().unwrap();
        let quiet_ports: Vec<u16> = seen
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Flow(flow) if flow.src.tenant.as_deref() == Some("0x1") => {
                    Some(flow.dst.port)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            quiet_ports,
            (0..20).map(|i| 20_000 + i * 250).collect::<Vec<_>>()
        );
    }
}
