//! `node.foreign-tenant`, reported: one `Detection` per pod that became foreign since the last
//! applied state (it appeared here, or the node or its namespace was relabelled), not one per
//! reconcile; and the foreign pods as `moat status` lists them. Which pods are foreign, and the datapath flag that cuts their traffic, is the
//! compiler's job (`compiler::foreign`).

use serde::Serialize;

use super::pipeline::{Input, Submitter};
use super::record::Detection;
use crate::compiler::foreign::{Foreign, NodeProfile};
use crate::config::GuardMode;
use crate::detections::FOREIGN_TENANT;
use crate::model::{PodKey, TenantName};

/// Detections for the pods foreign in `after` that were not foreign, or not under the same
/// profile, in `before`.
pub fn newly_foreign(before: &Foreign, after: &Foreign) -> Vec<Detection> {
    let Some(profile) = &after.profile else { return Vec::new() };
    let same_profile = before.profile.as_ref() == Some(profile);
    after
        .pods
        .iter()
        .filter(|(pod, tenant)| !same_profile || before.pods.get(*pod) != Some(*tenant))
        .map(|(pod, tenant)| detection(profile, pod, tenant))
        .collect()
}

/// Hands [`newly_foreign`]'s detections to the event pipeline (log, metrics, observe, Events).
pub fn report(submitter: &Submitter, before: &Foreign, after: &Foreign) {
    for detection in newly_foreign(before, after) {
        submitter.submit(Input::Detection(detection));
    }
}

fn detection(profile: &NodeProfile, pod: &PodKey, tenant: &TenantName) -> Detection {
    let blocked = profile.mode == GuardMode::Block;
    let evidence = format!("node label {}={}", profile.label, profile.tenant);
    let effect = if blocked { "all its traffic is denied" } else { "reported only" };
    Detection {
        id: FOREIGN_TENANT.id.into(),
        mode: profile.mode.name().into(),
        severity: FOREIGN_TENANT.severity.into(),
        tenant: Some(tenant.to_string()),
        namespace: Some(pod.namespace.to_string()),
        pod: Some(pod.name.to_string()),
        action: if blocked { "blocked" } else { "detected" }.into(),
        message: format!("pod {pod} of tenant {tenant} runs on a node reserved for tenant {} ({evidence}): {effect}", profile.tenant),
        evidence: Some(evidence),
        ..Detection::default()
    }
}

/// The foreign pods as `moat status` lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ForeignStatus {
    /// `label=tenant` when this node is reserved for one tenant (and the detection is on).
    pub node_profile: Option<String>,
    pub mode: Option<GuardMode>,
    /// `namespace/pod (tenant)`.
    pub pods: Vec<String>,
}

pub fn status(foreign: &Foreign) -> ForeignStatus {
    ForeignStatus {
        node_profile: foreign.profile.as_ref().map(|p| format!("{}={}", p.label, p.tenant)),
        mode: foreign.profile.as_ref().map(|p| p.mode),
        pods: foreign.pods.iter().map(|(pod, tenant)| format!("{pod} ({tenant})")).collect(),
    }
}

#[cfg(test)]
#[path = "foreign_tests.rs"]
mod tests;
