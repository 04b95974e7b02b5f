//! Prometheus metrics (`prometheus-client`, OpenMetrics text). Labels are bounded: tenants,
//! directions, verdicts, reasons, map and program names — never pods or addresses.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::events::pipeline::Sink;
use crate::events::record::{Event, Payload};
use crate::sources::unenforced::{PolicyKind, Unenforced};

/// Beyond this many distinct tenants in the verdict counters, further tenants are `other`.
pub const MAX_TENANT_LABELS: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub direction: String,
    pub verdict: String,
    pub tenant: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectionLabels {
    pub id: String,
    pub mode: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// `kernel` or `userspace`.
    pub stage: String,
    pub reason: String,
    /// Whose events: the local tenant of flow events, the pod's tenant for detections, `none`
    /// for pods without one, empty for losses of the node as a whole (an observer, a sink).
    pub tenant: String,
    /// `deny`, `allow`, `detection`, or `any`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `admin-socket` or `http`.
    pub server: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyKindLabels {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
    pub stage: String,
}

pub struct Metrics {
    registry: Registry,
    pub verdict_packets: Family<VerdictLabels, Counter>,
    pub verdict_bytes: Family<VerdictLabels, Counter>,
    pub detections: Family<DetectionLabels, Counter>,
    pub events: Family<TypeLabels, Counter>,
    pub events_lost: Family<LostLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub sync_ready: Gauge,
    pub sync_staleness: Gauge<f64, AtomicU64>,
    pub sync_failures: Counter,
    pub policy_generation: Gauge,
    pub programs_attached: Gauge,
    pub program_failures: Family<ProgramLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub unenforced_policies: Family<PolicyKindLabels, Gauge>,
    pub unenforced_kinds_unlisted: Family<PolicyKindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moat");
        let metrics = Self {
            registry: Registry::default(),
            verdict_packets: Family::default(),
            verdict_bytes: Family::default(),
            detections: Family::default(),
            events: Family::default(),
            events_lost: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            sync_ready: Gauge::default(),
            sync_staleness: Gauge::default(),
            sync_failures: Counter::default(),
            policy_generation: Gauge::default(),
            programs_attached: Gauge::default(),
            program_failures: Family::default(),
            refusals: Family::default(),
            unenforced_policies: Family::default(),
            unenforced_kinds_unlisted: Family::default(),
        };
        let r = &mut registry;
        r.register("verdict_packets", "Packets decided by the datapath, by local tenant", metrics.verdict_packets.clone());
        r.register("verdict_bytes", "Bytes decided by the datapath, by local tenant", metrics.verdict_bytes.clone());
        r.register("detections", "Runtime-guard detections by id, mode and tenant", metrics.detections.clone());
        r.register("events", "Events reported by the pipeline (aggregated ones by their count)", metrics.events.clone());
        r.register("events_lost", "Events lost, by stage (kernel, userspace), reason, tenant and kind", metrics.events_lost.clone());
        r.register("map_entries", "Entries in each pinned map", metrics.map_entries.clone());
        r.register("map_capacity", "Capacity of each pinned map", metrics.map_capacity.clone());
        r.register("sync_ready", "1 once the first complete state has reached the kernel", metrics.sync_ready.clone());
        r.register("sync_staleness_seconds", "Seconds since the last successful apply to the kernel", metrics.sync_staleness.clone());
        r.register("sync_failures", "Applies to the kernel that failed", metrics.sync_failures.clone());
        r.register("policy_generation", "Generation of the state the kernel enforces", metrics.policy_generation.clone());
        r.register("programs_attached", "Programs attached by this agent", metrics.programs_attached.clone());
        r.register("program_failures", "Programs that failed to load or attach", metrics.program_failures.clone());
        r.register("unenforced_policies", "Policy objects seen that moat does not enforce, by API group and kind", metrics.unenforced_policies.clone());
        r.register("unenforced_policy_kinds_unlisted", "Policy kinds moat does not enforce that the API server serves and the agent may not list (1)", metrics.unenforced_kinds_unlisted.clone());
        r.register("requests_refused", "Clients of the admin socket or the metrics server refused, by reason", metrics.refusals.clone());
        // Pre-create the node-wide loss series so a dashboard sees zeros, not gaps; a
        // tenant's series appear with its first loss.
        for reason in ["observer-lagged", "sink-dropped"] {
            drop(metrics.events_lost.get_or_create(&lost("userspace", reason, "", "any")));
        }
        Self { registry, ..metrics }
    }

    /// A client of the admin socket was refused (`too-many-clients`, `bad-request`).
    pub fn admin_refused(&self, reason: &str) {
        self.refusals.get_or_create(&RefusalLabels { server: "admin-socket".into(), reason: reason.into() }).inc();
    }

    /// The unenforced policies' gauges: kinds seen before and gone now drop to 0.
    pub fn unenforced(&self, before: Option<&Unenforced>, now: &Unenforced) {
        let labels = |kind: &PolicyKind| PolicyKindLabels { group: kind.group.clone(), kind: kind.kind.clone() };
        if let Some(before) = before {
            for kind in before.counts().keys() {
                self.unenforced_policies.get_or_create(&labels(kind)).set(0);
            }
            for kind in before.unlisted.keys() {
                self.unenforced_kinds_unlisted.get_or_create(&labels(kind)).set(0);
            }
        }
        for (kind, count) in now.counts() {
            self.unenforced_policies.get_or_create(&labels(kind)).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for kind in now.unlisted.keys() {
            self.unenforced_kinds_unlisted.get_or_create(&labels(kind)).set(1);
        }
    }

    /// OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The Prometheus text format (0.0.4) of OpenMetrics text, for scrapers and tools that do
/// not ask for OpenMetrics (`promtool check metrics`): a counter family `x` is announced as
/// `x_total`, the name of its samples, and `# EOF` / `# UNIT` lines are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

pub fn lost(stage: &str, reason: &str, tenant: &str, kind: &str) -> LostLabels {
    LostLabels { stage: stage.into(), reason: reason.into(), tenant: tenant.into(), kind: kind.into() }
}

/// Raises a counter to an absolute value read elsewhere (a kernel counter, an atomic).
pub fn raise_to(counter: &Counter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// Counts reported events and detections.
pub struct MetricsSink(pub std::sync::Arc<Metrics>);

impl Sink for MetricsSink {
    fn emit(&mut self, event: &Event) {
        let kind = match &event.payload {
            // Losses are counted where they happen (`moat_events_lost_total`).
            Payload::Dropped(_) => return,
            Payload::Flow(_) => "flow",
            Payload::Detection(detection) => {
                let labels = DetectionLabels {
                    id: detection.id.clone(),
                    mode: detection.mode.clone(),
                    tenant: detection.tenant.clone().unwrap_or_default(),
                };
                self.0.detections.get_or_create(&labels).inc_by(event.count);
                "detection"
            }
        };
        self.0.events.get_or_create(&TypeLabels { r#type: kind.into() }).inc_by(event.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let metrics = Metrics::new();
        let labels = VerdictLabels {
            direction: "egress".into(),
            verdict: "deny".into(),
            tenant: "alpha".into(),
            reason: "tenant-floor".into(),
        };
        raise_to(&metrics.verdict_packets.get_or_create(&labels), 7);
        raise_to(&metrics.verdict_packets.get_or_create(&labels), 5);
        metrics.sync_staleness.set(1.5);
        metrics.sync_ready.set(1);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"moat_verdict_packets_total{direction="egress",verdict="deny",tenant="alpha",reason="tenant-floor"} 7"#),
            "{text}"
        );
        assert!(text.contains("moat_sync_ready 1"), "{text}");
        assert!(text.contains("moat_sync_staleness_seconds 1.5"), "{text}");
        assert!(text.contains(r#"moat_events_lost_total{stage="userspace",reason="observer-lagged",tenant="",kind="any"} 0"#), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let prometheus = to_prometheus_text(&text);
        assert!(prometheus.contains("# TYPE moat_verdict_packets_total counter\n"), "{prometheus}");
        assert!(prometheus.contains("# HELP moat_verdict_packets_total Packets"), "{prometheus}");
        assert!(prometheus.contains("# TYPE moat_sync_ready gauge\n"), "{prometheus}");
        assert!(!prometheus.contains("# EOF"), "{prometheus}");
    }

    #[test]
    fn unenforced_policies_are_counted_and_drop_to_zero() {
        use crate::sources::unenforced::{PolicyKind, PolicyObject, Unenforced};
        let metrics = Metrics::new();
        let kind = PolicyKind { group: "policy.networking.k8s.io".into(), kind: "ClusterNetworkPolicy".into() };
        let mut now = Unenforced::default();
        for name in ["a", "b"] {
            now.objects.insert(PolicyObject { kind: kind.clone(), version: "v1alpha2".into(), namespace: String::new(), name: name.into() });
        }
        let calico = PolicyKind { group: "projectcalico.org".into(), kind: "GlobalNetworkPolicy".into() };
        now.unlisted.insert(calico, "list forbidden".into());
        metrics.unenforced(None, &now);
        let text = metrics.render().unwrap();
        assert!(text.contains(r#"moat_unenforced_policies{group="policy.networking.k8s.io",kind="ClusterNetworkPolicy"} 2"#), "{text}");
        assert!(text.contains(r#"moat_unenforced_policy_kinds_unlisted{group="projectcalico.org",kind="GlobalNetworkPolicy"} 1"#), "{text}");
        metrics.unenforced(Some(&now), &Unenforced::default());
        let text = metrics.render().unwrap();
        assert!(text.contains(r#"moat_unenforced_policies{group="policy.networking.k8s.io",kind="ClusterNetworkPolicy"} 0"#), "{text}");
        assert!(text.contains(r#"moat_unenforced_policy_kinds_unlisted{group="projectcalico.org",kind="GlobalNetworkPolicy"} 0"#), "{text}");
    }
}
