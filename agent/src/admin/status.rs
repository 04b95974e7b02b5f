//! The status report `moat status` prints.

use serde::Serialize;

use crate::events::foreign::{self, ForeignStatus};
use crate::config::GuardMode;
use crate::guard::view::NodeFiles;
use crate::guard::DetectionStatus;
use crate::kernel::guard_probes::ProbeStatus;
use crate::kernel::tc_pods::TcStatus;
use crate::kernel::capabilities::Capabilities;
use super::dns_status::DnsStatus;
use super::shared::{loss_series, KernelReading, ProgramStatus, Shared, SyncState};
use crate::sources::unenforced::{PolicyKind, PolicyObject};

#[derive(Debug, Serialize)]
pub struct Status {
    pub instance: String,
    pub ready: bool,
    pub capabilities: Capabilities,
    pub programs: Vec<ProgramStatus>,
    /// The ICMP program on pod interfaces (tc ingress); None until the agent attached it.
    pub icmp: Option<TcStatus>,
    pub sync: SyncState,
    /// Seconds since the last successful apply.
    pub staleness_seconds: Option<f64>,
    pub kernel: KernelReading,
    pub events_lost: EventsLost,
    pub detections: Detections,
    /// The runtime guard's probes: how each is attached on this kernel.
    pub probes: Vec<ProbeStatus>,
    pub metrics_url: Option<String>,
    pub admin_socket: String,
    /// Policy objects the source saw that moat does not enforce.
    pub unenforced_policies: UnenforcedPolicies,
    pub dns: DnsStatus,
}

#[derive(Debug, Default, Serialize)]
pub struct UnenforcedPolicies {
    /// The source has reported (false: not yet, e.g. before the first discovery round).
    pub reported: bool,
    pub objects: Vec<PolicyObject>,
    /// Kinds the API server serves whose objects the agent may not list.
    pub unlisted: Vec<UnlistedKind>,
    /// One line per object or unlisted kind.
    pub lines: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UnlistedKind {
    #[serde(flatten)]
    pub kind: PolicyKind,
    pub reason: String,
}

fn unenforced(shared: &Shared) -> UnenforcedPolicies {
    let last = shared.unenforced.lock().map(|u| u.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    let Some(last) = last else { return UnenforcedPolicies::default() };
    UnenforcedPolicies {
        reported: true,
        lines: last.lines(),
        objects: last.objects.into_iter().collect(),
        unlisted: last.unlisted.into_iter().map(|(kind, reason)| UnlistedKind { kind, reason }).collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct EventsLost {
    /// Over budget, or with the ring buffer full.
    pub kernel: u64,
    pub userspace: u64,
    /// Every loss by tenant, kind, stage and reason (as `moat_events_lost_total`).
    pub by_tenant: Vec<TenantLoss>,
}

#[derive(Debug, Serialize)]
pub struct TenantLoss {
    pub tenant: String,
    pub kind: String,
    pub stage: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Detections {
    /// Each detection, its configured and effective mode and the hook behind it.
    pub configured: Vec<DetectionStatus>,
    pub note: String,
    /// `node.foreign-tenant`: this node's profile and the pods it makes foreign.
    pub foreign_tenant: ForeignStatus,
    /// The node's files the guard protects; None before its first scan.
    pub node_files: Option<NodeFiles>,
}

/// Builds the report (reads the pinned maps: blocking).
pub fn report(shared: &Shared) -> Status {
    let kernel = shared.refresh();
    let sync = shared.sync_state();
    Status {
        instance: shared.instance.clone(),
        ready: sync.first_sync_done,
        capabilities: shared.capabilities(),
        programs: shared.programs(),
        icmp: shared.tc(),
        staleness_seconds: sync.staleness_seconds(),
        sync,
        events_lost: events_lost(shared),
        kernel,
        detections: detections(
            &shared.guard.lock().map(|g| g.clone()).unwrap_or_default(),
            shared.index().map(|index| foreign::status(&index.foreign)).unwrap_or_default(),
        ),
        probes: shared.probes.lock().map(|p| p.clone()).unwrap_or_default(),
        metrics_url: shared.metrics_url(),
        admin_socket: shared.admin_socket.display().to_string(),
        unenforced_policies: unenforced(shared),
        dns: shared.dns.lock().map(|d| d.clone()).unwrap_or_default(),
    }
}

fn events_lost(shared: &Shared) -> EventsLost {
    let (kernel, userspace) = shared.losses.by_stage();
    let by_tenant = loss_series(&shared.losses, shared.index().as_deref())
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(l, count)| TenantLoss { tenant: l.tenant, kind: l.kind, stage: l.stage, reason: l.reason, count })
        .collect();
    EventsLost { kernel, userspace, by_tenant }
}

fn detections(guard: &[DetectionStatus], foreign_tenant: ForeignStatus) -> Detections {
    let note = guard
        .iter()
        .map(|d| match (d.configured, d.effective) {
            (c, e) if c == e => format!("{} {}", d.id, e.name()),
            (c, e) => format!("{} {} (configured {})", d.id, e.name(), c.name()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let blocking = guard.iter().filter(|d| d.effective == GuardMode::Block).count();
    let note = if note.is_empty() { "no detections".into() } else { format!("{note} ({blocking} blocking)") };
    Detections { configured: guard.to_vec(), note, foreign_tenant, node_files: crate::guard::view::view().node.clone() }
}
