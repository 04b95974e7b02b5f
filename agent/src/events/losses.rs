//! Every event lost on its way, counted for whom it was lost (a tenant's flow events, a
//! pod's detections, or the node when nobody in particular), where (kernel or userspace)
//! and why. Kernel losses come from the budget map (`kernel::event_budgets`), read on each
//! summary and scrape; userspace losses are counted where they happen. The pipeline turns
//! what is new since its last summary into `dropped` events; metrics and status read totals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use moat_common::budget::{BudgetKey, BudgetState, CLASS_ALLOW, CLASS_DENY, CLASS_DETECTION};
use serde::Serialize;

use crate::compiler::Index;
use crate::kernel::event_budgets::BudgetReader;

/// Whose events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A local tenant by id (0: a pod without one yet).
    Tenant(u64),
    /// A pod by cgroup id.
    Pod(u64),
    /// Nobody in particular (an observer fell behind, a sink failed).
    Node,
}

/// Which events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deny,
    Allow,
    /// A detection by code (0: not known).
    Detection(u8),
    /// Any event (observer and sink losses).
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Kernel,
    Userspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The owner had spent its budget (kernel).
    OverBudget,
    /// The ring buffer was full (kernel).
    RingFull,
    /// Flow events may not fill the ring's reserve for detections (kernel).
    RingReserved,
    /// The owner's share of the pipeline's buffer was full (userspace).
    QueueFull,
    /// A live observer fell behind.
    ObserverLagged,
    /// A sink could not take the event.
    SinkDropped,
    /// A record from the kernel that could not be decoded.
    Undecodable,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deny => "deny",
            Kind::Allow => "allow",
            Kind::Detection(_) => "detection",
            Kind::Any => "any",
        }
    }
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Kernel => "kernel",
            Stage::Userspace => "userspace",
        }
    }
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::OverBudget => "over-budget",
            Reason::RingFull => "ring-full",
            Reason::RingReserved => "ring-reserved",
            Reason::QueueFull => "queue-full",
            Reason::ObserverLagged => "observer-lagged",
            Reason::SinkDropped => "sink-dropped",
            Reason::Undecodable => "undecodable",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LossKey {
    pub owner: Owner,
    pub kind: Kind,
    pub stage: Stage,
    pub reason: Reason,
}

impl LossKey {
    pub fn userspace(owner: Owner, kind: Kind, reason: Reason) -> Self {
        Self {
            owner,
            kind,
            stage: Stage::Userspace,
            reason,
        }
    }
}

/// A loss with its owner named from the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Named {
    /// The tenant whose events were lost; None for losses of the node as a whole.
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// `deny`, `allow`, `detection` or `any`.
    pub events: &'static str,
    /// The detection id, for lost detections whose detection is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<&'static str>,
    pub stage: &'static str,
    pub reason: &'static str,
}

impl Named {
    pub fn new(key: &LossKey, index: Option<&Index>) -> Self {
        let tenant_name = |id: u64| match (id, index) {
            (0, _) => "none".to_string(),
            (id, Some(index)) => index
                .tenants
                .get(&id)
                .map(ToString::to_string)
                .unwrap_or_else(|| format!("{id:#x}")),
            (id, None) => format!("{id:#x}"),
        };
        let (tenant, namespace, pod) = match key.owner {
            Owner::Tenant(id) => (Some(tenant_name(id)), None, None),
            Owner::Pod(cgroup) => match index
                .and_then(|index| index.pods_by_cgroup.get(&cgroup).map(|pod| (index, pod)))
            {
                Some((index, pod)) => (
                    Some(
                        index
                            .tenant_of(pod)
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "none".into()),
                    ),
                    Some(pod.namespace.to_string()),
                    Some(pod.name.to_string()),
                ),
                // A host process, or a pod the model does not know yet.
                None => (Some("none".into()), None, None),
            },
            Owner::Node => (None, None, None),
        };
        let detection = match key.kind {
            Kind::Detection(code) => {
                crate::detections::by_code(u32::from(code)).map(|spec| spec.id)
            }
            _ => None,
        };
        Self {
            tenant,
            namespace,
            pod,
            events: key.kind.name(),
            detection,
            stage: key.stage.name(),
            reason: key.reason.name(),
        }
    }
}

#[derive(Default)]
struct Ledger {
    totals: BTreeMap<LossKey, u64>,
    /// Totals as of the last summary.
    reported: BTreeMap<LossKey, u64>,
    /// The kernel's counters as last read, to add only what is new.
    kernel_seen: HashMap<BudgetKey, BudgetState>,
}

/// Events lost, by owner, stage and reason. Shared by the reader, the pipeline, the admin
/// socket and the sinks.
#[derive(Default)]
pub struct Losses {
    ledger: Mutex<Ledger>,
    kernel: Mutex<Option<BudgetReader>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Losses {
    pub fn count(&self, key: LossKey, n: u64) {
        if n > 0 {
            *lock(&self.ledger).totals.entry(key).or_default() += n;
        }
    }

    /// A sink could not take an event.
    pub fn sink_dropped(&self) {
        self.count(
            LossKey::userspace(Owner::Node, Kind::Any, Reason::SinkDropped),
            1,
        );
    }

    /// A live observer fell behind by `n` events.
    pub fn observer_lagged(&self, n: u64) {
        self.count(
            LossKey::userspace(Owner::Node, Kind::Any, Reason::ObserverLagged),
            n,
        );
    }

    /// From now on kernel losses are read from this budget map.
    pub fn attach_kernel(&self, reader: BudgetReader) {
        *lock(&self.kernel) = Some(reader);
    }

    /// Reads the kernel's counters and adds what is new. Walks the budget map (one entry per
    /// owner that sent events): call it per summary or scrape, not per event.
    pub fn poll_kernel(&self) {
        let readings = lock(&self.kernel).as_ref().map(BudgetReader::read);
        if let Some(readings) = readings {
            self.absorb_kernel(readings);
        }
    }

    /// Adds the growth of each kernel counter since it was last seen. A counter that went
    /// down belongs to an entry the kernel evicted and created again: all of it is new.
    pub fn absorb_kernel(&self, readings: Vec<(BudgetKey, BudgetState)>) {
        let mut ledger = lock(&self.ledger);
        let mut seen = HashMap::with_capacity(readings.len());
        for (key, state) in readings {
            let before = ledger.kernel_seen.get(&key).copied().unwrap_or_default();
            let grown = |now: u64, then: u64| if now >= then { now - then } else { now };
            let (owner, kind) = match key.class {
                CLASS_DENY => (Owner::Tenant(key.owner), Kind::Deny),
                CLASS_ALLOW => (Owner::Tenant(key.owner), Kind::Allow),
                CLASS_DETECTION => (Owner::Pod(key.owner), Kind::Detection(key.code)),
                _ => (Owner::Node, Kind::Any),
            };
            for (reason, now, then) in [
                (Reason::OverBudget, state.over_budget, before.over_budget),
                (Reason::RingFull, state.ring_full, before.ring_full),
                (
                    Reason::RingReserved,
                    state.ring_reserved,
                    before.ring_reserved,
                ),
            ] {
                let n = grown(now, then);
                if n > 0 {
                    *ledger
                        .totals
                        .entry(LossKey {
                            owner,
                            kind,
                            stage: Stage::Kernel,
                            reason,
                        })
                        .or_default() += n;
                }
            }
            seen.insert(key, state);
        }
        // Entries the kernel evicted are forgotten here too.
        ledger.kernel_seen = seen;
    }

    /// Every loss so far.
    pub fn totals(&self) -> Vec<(LossKey, u64)> {
        lock(&self.ledger)
            .totals
            .iter()
            .map(|(key, n)| (*key, *n))
            .collect()
    }

    /// What was lost since the previous call, and marks it reported.
    pub fn unreported(&self) -> Vec<(LossKey, u64)> {
        let mut ledger = lock(&self.ledger);
        let Ledger {
            totals, reported, ..
        } = &mut *ledger;
        let mut out = Vec::new();
        for (key, total) in totals.iter() {
            let before = reported.insert(*key, *total).unwrap_or(0);
            if *total > before {
                out.push((*key, total - before));
            }
        }
        out
    }

    /// Totals in the kernel and in userspace.
    pub fn by_stage(&self) -> (u64, u64) {
        lock(&self.ledger)
            .totals
            .iter()
            .fold((0, 0), |(kernel, user), (key, n)| match key.stage {
                Stage::Kernel => (kernel + n, user),
                Stage::Userspace => (kernel, user + n),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(owner: u64, class: u8) -> BudgetKey {
        BudgetKey {
            owner,
            class,
            code: 0,
            _pad: [0; 6],
        }
    }

    fn state(over_budget: u64, ring_full: u64) -> BudgetState {
        BudgetState {
            tat_ns: 0,
            over_budget,
            ring_full,
            ring_reserved: 0,
        }
    }

    #[test]
    fn kernel_counters_add_only_growth_and_survive_eviction() {
        let losses = Losses::default();
        losses.absorb_kernel(vec![(key(7, CLASS_DENY), state(100, 1))]);
        losses.absorb_kernel(vec![(key(7, CLASS_DENY), state(150, 1))]);
        let over = LossKey {
            owner: Owner::Tenant(7),
            kind: Kind::Deny,
            stage: Stage::Kernel,
            reason: Reason::OverBudget,
        };
        let totals: BTreeMap<_, _> = losses.totals().into_iter().collect();
        assert_eq!(totals.get(&over), Some(&150));
        // Evicted, then created again with a smaller count: all of it is new.
        losses.absorb_kernel(vec![]);
        losses.absorb_kernel(vec![(key(7, CLASS_DENY), state(20, 0))]);
        let totals: BTreeMap<_, _> = losses.totals().into_iter().collect();
        assert_eq!(totals.get(&over), Some(&170));
        assert_eq!(losses.by_stage(), (171, 0));
    }

    #[test]
    fn unreported_gives_what_is_new_once() {
        let losses = Losses::default();
        let queue = LossKey::userspace(Owner::Tenant(3), Kind::Deny, Reason::QueueFull);
        losses.count(queue, 5);
        assert_eq!(losses.unreported(), vec![(queue, 5)]);
        assert!(losses.unreported().is_empty());
        losses.count(queue, 2);
        losses.count(
            LossKey::userspace(Owner::Node, Kind::Any, Reason::ObserverLagged),
            0,
        );
        assert_eq!(losses.unreported(), vec![(queue, 2)]);
        assert_eq!(losses.by_stage(), (0, 7));
    }

    #[test]
    fn names_tenants_and_pods() {
        let mut index = Index::default();
        let alpha = crate::model::TenantName::Label("alpha".into());
        index.tenants.insert(alpha.id().0, alpha.clone());
        let pod = crate::model::PodKey::new("a1", "web");
        index.pods_by_cgroup.insert(42, pod.clone());
        index.namespace_tenants.insert(pod.namespace.clone(), alpha.clone());
        let tenant = Named::new(
            &LossKey::userspace(Owner::Tenant(alpha.id().0), Kind::Deny, Reason::QueueFull),
            Some(&index),
        );
        assert_eq!(
            (tenant.tenant.as_deref(), tenant.events, tenant.reason),
            (Some("alpha"), "deny", "queue-full")
        );
        let detection = LossKey {
            owner: Owner::Pod(42),
            kind: Kind::Detection(moat_common::event::DETECTION_HOST_MOUNT as u8),
            stage: Stage::Kernel,
            reason: Reason::OverBudget,
        };
        let named = Named::new(&detection, Some(&index));
        assert_eq!(
            (
                named.namespace.as_deref(),
                named.pod.as_deref(),
                named.tenant.as_deref()
            ),
            (Some("a1"), Some("web"), Some("alpha"))
        );
        assert_eq!(named.detection, Some("escape.host-mount"));
        assert_eq!(
            Named::new(
                &LossKey::userspace(Owner::Tenant(0), Kind::Deny, Reason::QueueFull),
                None
            )
            .tenant
            .as_deref(),
            Some("none")
        );
    }
}
