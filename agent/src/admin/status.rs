//! The status report `moat status` prints.

use serde::Serialize;

use crate::guard::foreign::{self, ForeignStatus};
use crate::guard::{DetectionStatus, GuardMode};
use crate::kernel::guard_probes::ProbeStatus;
use crate::kernel::tc_pods::TcStatus;
use crate::node::capabilities::Capabilities;
use crate::observability::{KernelReading, ProgramStatus, Shared, SyncState};
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

/// Tenant DNS isolation as configured (the `dns` section is read at start only).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsStatus {
    /// `off`, `detect` or `block`.
    pub isolation: &'static str,
    /// The cluster zones, lower case, longest first (as the kernel compares them).
    pub zones: Vec<String>,
    /// Namespaces every tenant may resolve: configured, plus those of `clusterDns` and
    /// `sharedServices`.
    pub shared_namespaces: Vec<String>,
    /// Which questions are decided: `UDP and TCP`; `UDP` when this kernel refused the TCP
    /// programs (`tcp_unavailable` says why); `none` with isolation off.
    pub inspected: &'static str,
    /// Why TCP questions pass unchecked on this kernel, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_unavailable: Option<String>,
}

impl DnsStatus {
    pub fn of(config: &crate::config::Config) -> Self {
        use crate::config::DnsIsolation;
        let isolation = match config.dns.isolation {
            DnsIsolation::Off => "off",
            DnsIsolation::Detect => "detect",
            DnsIsolation::Block => "block",
        };
        let zones = crate::compiler::dns::zones(config).into_values().map(|zone| zone_name(&zone)).collect();
        let shared_namespaces = crate::compiler::dns::shared_namespaces(config).into_iter().collect();
        // Until the TCP programs are attached (`with_tcp`).
        let inspected = if config.dns.isolation == DnsIsolation::Off { "none" } else { "UDP" };
        Self { isolation, zones, shared_namespaces, inspected, tcp_unavailable: None }
    }

    /// After attaching the TCP programs: `Err` says why this kernel refused them.
    pub fn with_tcp(&mut self, attached: Result<(), String>) {
        match attached {
            Ok(()) => self.inspected = "UDP and TCP",
            Err(reason) => self.tcp_unavailable = Some(reason),
        }
    }
}

/// `\x07cluster\x05local\x00` → `cluster.local`.
fn zone_name(zone: &moat_common::dns::DnsZone) -> String {
    let wire = &zone.name[..(zone.len as usize).min(zone.name.len())];
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at).filter(|len| **len != 0) {
        let label = wire.get(at + 1..at + 1 + len as usize).unwrap_or_default();
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len as usize;
    }
    labels.join(".")
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
    let by_tenant = crate::observability::loss_series(&shared.losses, shared.index().as_deref())
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
    Detections { configured: guard.to_vec(), note, foreign_tenant }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DnsConfig, DnsIsolation};

    #[test]
    fn dns_status_says_the_mode_zones_and_shared_namespaces() {
        let config = Config {
            dns: DnsConfig { isolation: DnsIsolation::Detect, zones: vec!["Cluster.Local".into(), "corp.example.com".into()], shared_namespaces: vec!["tools".into()] },
            ..Config::default()
        };
        let status = DnsStatus::of(&config);
        assert_eq!(status.isolation, "detect");
        assert_eq!(status.zones, ["corp.example.com", "cluster.local"], "as compared: longest first, lower case");
        assert_eq!(status.shared_namespaces, ["kube-system", "tools"], "configured plus clusterDns's");
        assert_eq!(DnsStatus::of(&Config::default()).isolation, "block");
        assert_eq!(status.inspected, "UDP", "before the TCP programs are attached");
        let mut refused = status.clone();
        refused.with_tcp(Err("sk_msg: load: EINVAL".into()));
        assert_eq!((refused.inspected, refused.tcp_unavailable.as_deref()), ("UDP", Some("sk_msg: load: EINVAL")));
        let mut both = status;
        both.with_tcp(Ok(()));
        assert_eq!((both.inspected, both.tcp_unavailable), ("UDP and TCP", None));
        let off = Config { dns: DnsConfig { isolation: DnsIsolation::Off, ..DnsConfig::default() }, ..Config::default() };
        assert_eq!(DnsStatus::of(&off).inspected, "none");
    }
}
