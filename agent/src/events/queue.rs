//! The buffer between the producers (the ring-buffer reader, the guard) and the pipeline,
//! fair per tenant. Flow events wait in one queue per local tenant, served round-robin, so
//! each tenant with events gets the same share of the pipeline. When the buffer is full the
//! longest queue gives way (longest-queue drop): a flooding tenant loses its own events,
//! never a quiet tenant's. Detections have a queue of their own, served first, which flow
//! events can neither fill nor delay. Nothing is dropped uncounted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use moat_common::event::{FlowEvent, GuardEvent, EVENT_KIND_ALLOW};
use tokio::sync::Notify;

use super::losses::{Kind, LossKey, Losses, Owner, Reason};
use super::record::Detection;

/// What enters the pipeline.
#[derive(Debug)]
pub enum Input {
    Deny(FlowEvent),
    /// A detection record from the kernel, named here like flow events.
    Guard(GuardEvent),
    Detection(Detection),
}

struct State {
    detections: VecDeque<Input>,
    detection_capacity: usize,
    flows: HashMap<u64, VecDeque<Input>>,
    /// Tenants with queued flow events, in serving order.
    turn: VecDeque<u64>,
    flow_len: usize,
    flow_capacity: usize,
    /// The tenant believed to have the longest queue: kept on every push, so a full buffer
    /// finds whom to drop from without a scan (only a pop can make it slightly stale).
    longest: Option<u64>,
    closed: bool,
}

pub struct FairQueue {
    state: Mutex<State>,
    ready: Notify,
    losses: Arc<Losses>,
}

fn kind_of(input: &Input) -> (Owner, Kind) {
    match input {
        Input::Deny(event) => (
            Owner::Tenant(event.local_tenant),
            if event.kind == EVENT_KIND_ALLOW {
                Kind::Allow
            } else {
                Kind::Deny
            },
        ),
        Input::Guard(event) => (Owner::Pod(event.cgroup), Kind::Detection(event.detection)),
        Input::Detection(_) => (Owner::Node, Kind::Detection(0)),
    }
}

impl FairQueue {
    /// `flow_capacity` flow events in all, `detection_capacity` detections.
    pub fn new(flow_capacity: usize, detection_capacity: usize, losses: Arc<Losses>) -> Self {
        let state = State {
            detections: VecDeque::new(),
            detection_capacity: detection_capacity.max(1),
            flows: HashMap::new(),
            turn: VecDeque::new(),
            flow_len: 0,
            flow_capacity: flow_capacity.max(1),
            longest: None,
            closed: false,
        };
        Self {
            state: Mutex::new(state),
            ready: Notify::new(),
            losses,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an event, or counts it (or the event it displaces) lost. Never blocks.
    pub fn push(&self, input: Input) {
        let dropped = {
            let mut state = self.lock();
            match &input {
                Input::Deny(event) => {
                    let tenant = event.local_tenant;
                    state.push_flow(tenant, input)
                }
                _ if state.detections.len() >= state.detection_capacity => Some(input),
                _ => {
                    state.detections.push_back(input);
                    None
                }
            }
        };
        match dropped {
            Some(lost) => {
                let (owner, kind) = kind_of(&lost);
                self.losses
                    .count(LossKey::userspace(owner, kind, Reason::QueueFull), 1);
            }
            None => self.ready.notify_one(),
        }
    }

    /// The next event: detections first, then one flow event per tenant in turn.
    pub fn pop(&self) -> Option<Input> {
        self.lock().pop()
    }

    /// Waits for the next event; None once closed and drained.
    pub async fn next(&self) -> Option<Input> {
        loop {
            {
                let mut state = self.lock();
                if let Some(input) = state.pop() {
                    return Some(input);
                }
                if state.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// No more events will come: `next` returns None once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// A record from the kernel that could not be decoded.
    pub fn undecodable(&self) {
        self.losses.count(
            LossKey::userspace(Owner::Node, Kind::Any, Reason::Undecodable),
            1,
        );
    }

    /// Flow events and detections waiting.
    pub fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.flow_len, state.detections.len())
    }
}

impl State {
    /// Queues a flow event; returns the event that had to go, if any.
    fn push_flow(&mut self, tenant: u64, input: Input) -> Option<Input> {
        let own = self.flows.get(&tenant).map_or(0, VecDeque::len);
        let mut dropped = None;
        if self.flow_len >= self.flow_capacity {
            let longest = self.longest_queue();
            let longer = longest.filter(|(t, len)| *t != tenant && *len > own);
            let Some((victim, _)) = longer else {
                // This tenant holds (one of) the longest queues: its own event goes.
                return Some(input);
            };
            dropped = self.flows.get_mut(&victim).and_then(VecDeque::pop_front);
            if dropped.is_some() {
                self.flow_len -= 1;
            }
            if self.flows.get(&victim).is_some_and(VecDeque::is_empty) {
                self.flows.remove(&victim);
                self.turn.retain(|t| *t != victim);
                self.longest = None;
            }
        }
        let queue = self.flows.entry(tenant).or_default();
        if queue.is_empty() {
            self.turn.push_back(tenant);
        }
        queue.push_back(input);
        let len = queue.len();
        self.flow_len += 1;
        let longest_len = self
            .longest
            .and_then(|t| self.flows.get(&t))
            .map_or(0, VecDeque::len);
        if len >= longest_len {
            self.longest = Some(tenant);
        }
        dropped
    }

    fn longest_queue(&mut self) -> Option<(u64, usize)> {
        let cached = self
            .longest
            .and_then(|t| self.flows.get(&t).map(|q| (t, q.len())));
        if let Some(found) = cached.filter(|(_, len)| *len > 0) {
            return Some(found);
        }
        let found = self
            .flows
            .iter()
            .map(|(t, q)| (*t, q.len()))
            .max_by_key(|(_, len)| *len);
        self.longest = found.map(|(t, _)| t);
        found
    }

    fn pop(&mut self) -> Option<Input> {
        if let Some(detection) = self.detections.pop_front() {
            return Some(detection);
        }
        let tenant = self.turn.pop_front()?;
        let queue = self.flows.get_mut(&tenant)?;
        let input = queue.pop_front();
        if queue.is_empty() {
            self.flows.remove(&tenant);
            if self.longest == Some(tenant) {
                self.longest = None;
            }
        } else {
            self.turn.push_back(tenant);
        }
        if input.is_some() {
            self.flow_len -= 1;
        }
        input
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::Detection;
    use moat_common::event::{FlowEvent, EVENT_KIND_DENY};

    fn deny(tenant: u64, port: u16) -> Input {
        Input::Deny(FlowEvent {
            kind: EVENT_KIND_DENY,
            local_tenant: tenant,
            remote_port: port,
            ..FlowEvent::default()
        })
    }

    fn tenant_and_port(input: &Input) -> (u64, u16) {
        match input {
            Input::Deny(event) => (event.local_tenant, event.remote_port),
            _ => (0, 0),
        }
    }

    fn lost(losses: &Losses, tenant: u64) -> u64 {
        let key = LossKey::userspace(Owner::Tenant(tenant), Kind::Deny, Reason::QueueFull);
        losses
            .totals()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| n)
    }

    #[test]
    fn a_flood_displaces_only_the_flooder() {
        let losses = Arc::new(Losses::default());
        let queue = FairQueue::new(100, 10, losses.clone());
        for port in 0..10_000 {
            queue.push(deny(2, port));
            if port % 1000 == 0 {
                queue.push(deny(1, port));
            }
        }
        assert_eq!(lost(&losses, 1), 0, "the quiet tenant lost nothing");
        assert_eq!(
            lost(&losses, 2),
            10_000 - 90,
            "the flooder kept the rest of the buffer"
        );
        // Served in turn: the quiet tenant's events come out among the first.
        let first: Vec<(u64, u16)> = (0..20)
            .filter_map(|_| queue.pop())
            .map(|i| tenant_and_port(&i))
            .collect();
        let quiet: Vec<u16> = first
            .iter()
            .filter(|(t, _)| *t == 1)
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(
            quiet,
            vec![0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000],
            "{first:?}"
        );
    }

    #[test]
    fn a_quiet_tenant_displaces_the_longest_queue_when_full() {
        let losses = Arc::new(Losses::default());
        let queue = FairQueue::new(10, 10, losses.clone());
        for port in 0..10 {
            queue.push(deny(2, port));
        }
        queue.push(deny(1, 7));
        assert_eq!((lost(&losses, 1), lost(&losses, 2)), (0, 1));
        assert_eq!(queue.len(), (10, 0));
        let order: Vec<(u64, u16)> = std::iter::from_fn(|| queue.pop())
            .map(|i| tenant_and_port(&i))
            .collect();
        assert_eq!(
            order[..2],
            [(2, 1), (1, 7)],
            "the flooder's oldest went; then each tenant in turn: {order:?}"
        );
        assert_eq!(order.len(), 10);
    }

    #[test]
    fn detections_go_first_and_are_not_displaced_by_flows() {
        let losses = Arc::new(Losses::default());
        let queue = FairQueue::new(5, 2, losses.clone());
        for port in 0..100 {
            queue.push(deny(2, port));
        }
        let detection = || {
            Input::Detection(Detection {
                id: "x".into(),
                ..Detection::default()
            })
        };
        queue.push(detection());
        queue.push(detection());
        queue.push(detection());
        assert!(matches!(queue.pop(), Some(Input::Detection(_))));
        assert!(matches!(queue.pop(), Some(Input::Detection(_))));
        assert!(matches!(queue.pop(), Some(Input::Deny(_))));
        let lost_detections =
            LossKey::userspace(Owner::Node, Kind::Detection(0), Reason::QueueFull);
        assert!(
            losses.totals().contains(&(lost_detections, 1)),
            "{:?}",
            losses.totals()
        );
    }

    #[tokio::test]
    async fn next_waits_and_ends_when_closed() {
        let queue = Arc::new(FairQueue::new(10, 10, Arc::new(Losses::default())));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut seen = 0;
                while queue.next().await.is_some() {
                    seen += 1;
                }
                seen
            }
        });
        tokio::task::yield_now().await;
        queue.push(deny(1, 1));
        queue.push(deny(2, 2));
        queue.close();
        assert_eq!(waiter.await.ok(), Some(2));
    }
}
