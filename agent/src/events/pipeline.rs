//! The pipeline task: decoded kernel records (and detections) come in through a bounded
//! buffer, are named from the current model, aggregated, and fanned out to every sink and to
//! the live observers (`moat observe`). Nothing is dropped silently: a full buffer and an
//! observer too slow to keep up are counted as events lost in userspace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_common::event::{FlowEvent, GuardEvent};
use tokio::sync::{broadcast, mpsc, watch};

use super::aggregate::Aggregator;
use super::deny::DenyRecord;
use super::record::{Detection, Event, Payload};
use crate::compiler::Index;

/// What enters the pipeline.
#[derive(Debug)]
pub enum Input {
    Deny(FlowEvent),
    /// A detection record from the kernel, named here like flow events.
    Guard(GuardEvent),
    Detection(Detection),
}

/// Events lost after the kernel handed them over.
#[derive(Debug, Default)]
pub struct Losses {
    /// The buffer between the ring-buffer reader and the pipeline was full.
    pub buffer_full: AtomicU64,
    /// A live observer fell behind and missed events.
    pub observer_lagged: AtomicU64,
    /// A sink could not take an event (e.g. the Kubernetes Events queue was full).
    pub sink_dropped: AtomicU64,
}

impl Losses {
    pub fn userspace(&self) -> u64 {
        self.buffer_full.load(Ordering::Relaxed)
            + self.observer_lagged.load(Ordering::Relaxed)
            + self.sink_dropped.load(Ordering::Relaxed)
    }
}

/// Where producers hand events to the pipeline. Never blocks: a full buffer counts a loss.
#[derive(Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Input>,
    losses: Arc<Losses>,
}

impl Submitter {
    pub fn submit(&self, input: Input) {
        if self.tx.try_send(input).is_err() {
            self.losses.buffer_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A destination of events. Sinks run on the pipeline task and must not block on I/O that
/// can stall (a network sink queues, and counts what it has to drop, itself).
pub trait Sink: Send {
    fn emit(&mut self, event: &Event);
}

pub struct Pipeline {
    rx: mpsc::Receiver<Input>,
    index: watch::Receiver<Arc<Index>>,
    aggregator: Aggregator,
    window: Duration,
    sinks: Vec<Box<dyn Sink>>,
    hub: broadcast::Sender<Arc<Event>>,
}

/// Creates the pipeline and the handle producers submit to.
pub fn new(
    buffer: usize,
    window: Duration,
    index: watch::Receiver<Arc<Index>>,
    sinks: Vec<Box<dyn Sink>>,
    hub: broadcast::Sender<Arc<Event>>,
    losses: Arc<Losses>,
) -> (Pipeline, Submitter) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let pipeline = Pipeline { rx, index, aggregator: Aggregator::new(window), window, sinks, hub };
    (pipeline, Submitter { tx, losses })
}

impl Pipeline {
    /// Runs until every submitter is gone.
    pub async fn run(mut self) {
        let period = (self.window / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(input) => self.take(input),
                    None => break,
                },
                _ = tick.tick() => {
                    for event in self.aggregator.flush(Instant::now()) {
                        self.emit(event);
                    }
                }
            }
        }
        for event in self.aggregator.flush(Instant::now() + self.window) {
            self.emit(event);
        }
    }

    fn take(&mut self, input: Input) {
        let payload = match input {
            Input::Deny(raw) => Payload::Flow(DenyRecord::from_event(&raw, &self.index.borrow())),
            Input::Guard(raw) => match crate::guard::decode(&raw, &self.index.borrow()) {
                Some(detection) => Payload::Detection(detection),
                None => return,
            },
            Input::Detection(detection) => Payload::Detection(detection),
        };
        if let Some(event) = self.aggregator.observe(Event::new(payload), Instant::now()) {
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
            tenant: None,
            namespace: None,
            pod: None,
            message: String::new(),
            ..Detection::default()
        })
    }

    #[tokio::test]
    async fn full_buffer_is_counted_and_repeats_are_aggregated() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (_index_tx, index_rx) = watch::channel(Arc::new(Index::default()));
        let (hub, _) = broadcast::channel(16);
        let losses = Arc::new(Losses::default());
        let (pipeline, submitter) = new(
            10,
            Duration::from_millis(100),
            index_rx,
            vec![Box::new(Collect(seen.clone()))],
            hub,
            losses.clone(),
        );
        for _ in 0..25 {
            submitter.submit(detection());
        }
        assert_eq!(losses.buffer_full.load(Ordering::Relaxed), 15);
        assert_eq!(losses.userspace(), 15);
        drop(submitter);
        pipeline.run().await;
        let seen = seen.lock().unwrap();
        let counts: Vec<(u64, bool)> = seen.iter().map(|e| (e.count, e.aggregated)).collect();
        assert_eq!(counts, vec![(1, false), (9, true)]);
    }
}
