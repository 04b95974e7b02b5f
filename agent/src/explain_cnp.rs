//! `moat explain` for ClusterNetworkPolicies: what the cluster's Admin and Baseline tiers
//! would decide for the flow (the API's evaluation order, `model::cnp_eval`), named down to
//! the rule, shown apart from what moat enforces — the datapath does not enforce them yet.

use moat_common::maps::NOT_ISOLATED;
use moat_common::verdict::{LocalEnd, Reason};

use super::{peer, ExplainError};
use crate::compiler::Desired;
use crate::model::flow::{Family, Target};
use crate::model::cnp::ClusterNetworkPolicy;
use crate::model::cnp_eval::{self, Decider, Direction, End, NetworkPolicyTier};
use crate::model::{Cluster, PodKey};

/// Reason lines for `from` → `to`, and the verdict the tiers would give.
pub fn describe(
    cluster: &Cluster,
    desired: &Desired,
    policies: &[ClusterNetworkPolicy],
    (from, to): (&PodKey, &PodKey),
    target: Target,
    family: Family,
) -> Result<(Vec<String>, &'static str), ExplainError> {
    let (protocol, port) = super::protocol_port(target, family);
    let src = peer(cluster, desired, from, family)?;
    let dst = peer(cluster, desired, to, family)?;
    let end = |key: &PodKey| -> Result<End<'_>, ExplainError> {
        let pod = cluster.pods.get(key).ok_or_else(|| ExplainError::UnknownPod(key.clone()))?;
        let labels = cluster.namespaces.get(&*key.namespace).map(|ns| &ns.labels);
        let ip = super::address(pod, family).ok_or_else(|| ExplainError::NoAddress(key.clone()))?;
        Ok(End { pod, namespace_labels: labels.unwrap_or_else(|| &EMPTY), ip })
    };
    let mut lines = Vec::new();
    let floor = desired.decide(src, dst, protocol, port).is_allow();
    let mut allowed = floor;
    for (direction, local, remote, set, other) in [
        (Direction::Egress, from, to, src.endpoint.egress_policy, dst),
        (Direction::Ingress, to, from, dst.endpoint.ingress_policy, src),
    ] {
        let network_policy = if set == NOT_ISOLATED {
            NetworkPolicyTier::NotSelected
        } else if desired.allowing_rules(set, &other, protocol, port).is_empty() {
            NetworkPolicyTier::Denied
        } else {
            NetworkPolicyTier::Allowed
        };
        let decision = cnp_eval::decide(policies, direction, end(local)?, end(remote)?, protocol, port, network_policy);
        allowed &= decision.allowed;
        let verdict = if decision.allowed { "accept" } else { "deny" };
        let passed: Vec<String> = decision.passed.iter().map(ToString::to_string).collect();
        let passed = if passed.is_empty() { String::new() } else { format!(" (after {})", passed.join("; ")) };
        let decider = match &decision.decider {
            Decider::Rule(rule) => rule.to_string(),
            Decider::NetworkPolicy => "NetworkPolicy tier".into(),
            Decider::Default => "no tier decides (default)".into(),
        };
        // The in-tenant default (defaultDenyInTenant) is moat's own NetworkPolicy-tier rule.
        let local_side = if direction == Direction::Egress { LocalEnd::Source } else { LocalEnd::Destination };
        let tenant_default = floor && decision.decider == Decider::Default && desired.decide_at(src, dst, protocol, port, local_side) == Reason::TenantDefaultDeny;
        if tenant_default {
            allowed = false;
        }
        let tenant_default = if tenant_default { "; then defaultDenyInTenant denies" } else { "" };
        lines.push(format!(
            "ClusterNetworkPolicy (NOT ENFORCED by moat yet) {} of {local}: {verdict} by {decider}{passed}{tenant_default}",
            direction.as_str()
        ));
    }
    if !floor {
        lines.push("ClusterNetworkPolicy: the tenant floor stays the first gate; no ClusterNetworkPolicy opens it".into());
    }
    let verdict = if allowed { "allow" } else { "deny" };
    lines.push(format!("with its ClusterNetworkPolicies enforced, this flow would be: {}", verdict.to_uppercase()));
    Ok((lines, verdict))
}

static EMPTY: std::sync::LazyLock<crate::model::Labels> = std::sync::LazyLock::new(crate::model::Labels::new);
