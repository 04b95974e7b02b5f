//! `moat explain`: what the datapath decides for a flow between two pods, and every rule that
//! decided it. It compiles the manifests exactly as the agent does (cluster-wide) and runs the
//! kernel's own decision function over those entries, so what it says is what the kernel does.

use std::net::IpAddr;

use moat_common::maps::{TierSets, NOT_ISOLATED};
use moat_common::verdict::{self, LocalEnd, Peer, PeerClass, Reason};
use serde::Serialize;

use crate::compiler::{self, CompileError, Desired};
use crate::config::ConfigError;
use crate::config::GuardMode;
use crate::model::flow::{Family, Target};
use crate::model::{Cluster, Labels, PodKey};
use crate::sources::manifests::ManifestError;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("pod {0} is not in the manifests")]
    UnknownPod(PodKey),
    #[error("pod {0} has no pod address of its own (no status.podIPs, or hostNetwork), so no flow to or from it can be explained")]
    NoAddress(PodKey),
    #[error("{0:?} is not a DNS name (labels of 1-63 bytes, at most 255 bytes in all)")]
    NotADnsName(String),
    #[error("writing output: {0}")]
    Output(#[from] serde_json::Error),
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub verdict: &'static str,
    /// False while the manifests hold policy objects moat does not enforce: the verdict is
    /// what moat does, not necessarily what the cluster's other enforcers do.
    pub complete: bool,
    pub reasons: Vec<String>,
}

/// Marks verdicts decided without the policy objects moat does not enforce.
pub fn incomplete(results: &mut [Explanation], unenforced: &[String]) {
    if unenforced.is_empty() {
        return;
    }
    for result in results {
        result.complete = false;
        result.reasons.push(format!(
            "INCOMPLETE: {} policy object(s) in the manifests are not enforced by moat, so the verdict above does not include them (listed first)",
            unenforced.len()
        ));
    }
}

/// The verdict for `from` → `to` and the rules behind it.
pub fn explain(cluster: &Cluster, desired: &Desired, from: &PodKey, to: &PodKey, target: Target, family: Family) -> Result<Explanation, ExplainError> {
    let src = peer(cluster, desired, from, family)?;
    let dst = peer(cluster, desired, to, family)?;
    // As the datapath decides it (`Reason::SamePod`). A hostNetwork pod never gets here:
    // `peer` refuses it (its address and loopback are the node's).
    if from == to {
        return Ok(Explanation {
            from: from.to_string(),
            to: to.to_string(),
            verdict: "allow",
            complete: true,
            reasons: vec![format!(
                "{}: {from} to itself (its own address or loopback) never leaves its network namespace; no NetworkPolicy or tenant rule applies",
                Reason::SamePod.name()
            )],
        });
    }
    Ok(explain_flow(desired, (from, src), (&to.to_string(), Some(to), dst), protocol_port(target, family)))
}

/// The verdict for `from` → the address `to` (a node, a Service's backend outside the
/// cluster, the Internet): the floor and `from`'s egress rules, as the kernel decides them. A
/// pod's own address is explained as that pod, ingress included. The address's family is the
/// flow's.
pub fn explain_to_address(cluster: &Cluster, desired: &Desired, from: &PodKey, to: IpAddr, target: Target) -> Result<Explanation, ExplainError> {
    let family = if to.is_ipv4() { Family::V4 } else { Family::V6 };
    let owner = cluster.pods.values().find(|pod| !pod.host_network && pod.ips.contains(&to));
    if let Some(pod) = owner {
        let mut explained = explain(cluster, desired, from, &pod.key, target, family)?;
        explained.to = format!("{to} ({})", pod.key);
        return Ok(explained);
    }
    let src = peer(cluster, desired, from, family)?;
    let dst = desired.remote_peer(&compiler::mapped(to));
    Ok(explain_flow(desired, (from, src), (&to.to_string(), None, dst), protocol_port(target, family)))
}

/// `from` → `to`, with `to`'s pod if it is one (only a pod's own rules decide ingress).
fn explain_flow(desired: &Desired, (from, src): (&PodKey, Peer), (to, to_pod, dst): (&str, Option<&PodKey>, Peer), (protocol, port): (u8, u16)) -> Explanation {
    let mut reasons = Vec::new();
    let floor = desired.decide(src, dst, protocol, port);
    reasons.push(describe_floor(desired, floor, &from.to_string(), to, &src, &dst));
    reasons.extend(describe_foreign(desired, [Some(from), to_pod].into_iter().flatten()));
    if !floor.is_allow() {
        return Explanation { from: from.to_string(), to: to.to_string(), verdict: "deny", complete: true, reasons };
    }
    let mut allowed = true;
    let ingress = to_pod.map(|pod| (LocalEnd::Destination, pod, dst.endpoint.ingress_policy, src));
    for (local, pod, set, peer) in [Some((LocalEnd::Source, from, src.endpoint.egress_policy, dst)), ingress].into_iter().flatten() {
        let tier_sets = desired.index.cluster_pod_sets.get(pod).copied().unwrap_or(TierSets::default());
        let tier_set = if local == LocalEnd::Source { tier_sets.egress } else { tier_sets.ingress };
        let decision = desired.decide_at(src, dst, protocol, port, local, tier_set);
        allowed &= decision.is_allow();
        let direction = if local == LocalEnd::Source { "egress" } else { "ingress" };
        if let Some(line) = explain_cnp::describe(desired, tier_set, &peer, (protocol, port), decision) {
            reasons.push(format!("{direction} of {pod}: {line}"));
            if decision.is_cluster_tier() {
                continue;
            }
        }
        reasons.push(if set == NOT_ISOLATED {
            if decision == Reason::TenantDefaultDeny {
                format!("{direction} of {pod}: no NetworkPolicy selects it, and defaultDenyInTenant denies within the tenant")
            } else {
                format!("{direction} of {pod}: no NetworkPolicy selects it for {direction}; allowed")
            }
        } else {
            let rules = desired.allowing_rules(set, &peer, protocol, port);
            if rules.is_empty() {
                let policies: Vec<String> = desired.index.policy_sets.get(&set).map(|s| s.policies.iter().map(ToString::to_string).collect()).unwrap_or_default();
                format!("{direction} of {pod}: isolated by {}; no rule allows this peer and port", policies.join(", "))
            } else {
                let names: Vec<String> = rules.iter().map(|r| format!("{} ({} rule {})", r.policy, r.direction.as_str(), r.index)).collect();
                format!("{direction} of {pod}: allowed by {}", names.join(", "))
            }
        });
    }
    Explanation { from: from.to_string(), to: to.to_string(), verdict: if allowed { "allow" } else { "deny" }, complete: true, reasons }
}

/// The protocol number and destination port of `target`.
fn protocol_port(target: Target, family: Family) -> (u8, u16) {
    match target {
        Target::Port(port, protocol) => (protocol.number(), port),
        Target::Icmp => (if family == Family::V4 { moat_common::IPPROTO_ICMP } else { moat_common::IPPROTO_ICMPV6 }, 0),
    }
}

/// The pod's address of `family` (else its first); None for hostNetwork pods and pods
/// without one.
fn address(pod: &crate::model::Pod, family: Family) -> Option<IpAddr> {
    let wanted = |ip: &&IpAddr| ip.is_ipv4() == (family == Family::V4);
    pod.ips.iter().find(wanted).or(pod.ips.first()).copied().filter(|_| !pod.host_network)
}

fn peer(cluster: &Cluster, desired: &Desired, key: &PodKey, family: Family) -> Result<Peer, ExplainError> {
    let pod = cluster.pods.get(key).ok_or_else(|| ExplainError::UnknownPod(key.clone()))?;
    // The datapath identifies a remote pod by its address; without one there is no verdict.
    match address(pod, family) {
        Some(ip) => Ok(desired.remote_peer(&compiler::mapped(ip))),
        None => Err(ExplainError::NoAddress(key.clone())),
    }
}

fn describe_floor(desired: &Desired, floor: Reason, from: &str, to: &str, src: &Peer, dst: &Peer) -> String {
    let tenant = |peer: &Peer, pod: &str| match peer.class {
        PeerClass::Known => desired.index.tenants.get(&peer.tenant()).map(ToString::to_string).unwrap_or_else(|| "?".into()),
        PeerClass::Pending => format!("pending ({pod} has no attributable address)"),
        PeerClass::Unknown => "not a pod".into(),
    };
    let (a, b) = (tenant(src, from), tenant(dst, to));
    match floor {
        Reason::SameTenant => format!("tenant floor: both in tenant {a}"),
        Reason::SharedService => {
            let name = desired.index.shared_names.get(&dst.endpoint.shared).cloned().unwrap_or_default();
            format!("tenant floor: {a} -> {b} crosses tenants; allowed by the exception for shared service {name}")
        }
        Reason::TenantPair => format!("tenant floor: {a} -> {b} allowed by an allowedTenantPairs exception"),
        Reason::CrossTenant => format!("tenant floor: {a} -> {b} crosses tenants and no exception allows it (NetworkPolicies cannot widen this)"),
        Reason::Pending => format!("tenant floor: {a} -> {b}: a pending endpoint gets no cross-tenant traffic"),
        Reason::ForeignTenant => {
            format!("{}: a pod of another tenant on a node reserved for one tenant gets no traffic at all", floor.name())
        }
        other => format!("tenant floor: {}", verdict::Reason::name(other)),
    }
}

/// For each of `pods` that is foreign on this node: why, and whether it is blocked (the
/// verdict above says so already) or only reported (detect mode).
fn describe_foreign<'a>(desired: &Desired, pods: impl IntoIterator<Item = &'a PodKey>) -> Vec<String> {
    let foreign = &desired.index.foreign;
    let Some(profile) = &foreign.profile else { return Vec::new() };
    let effect = match profile.mode {
        GuardMode::Block => "all its traffic is denied",
        GuardMode::Detect | GuardMode::Off => "reported, not blocked (node.foreign-tenant: detect)",
    };
    pods.into_iter()
        .filter_map(|pod| {
            let tenant = foreign.pods.get(pod)?;
            Some(format!(
                "node profile: {pod} is tenant {tenant} on a node reserved for tenant {} (node label {}={}); {effect}",
                profile.tenant, profile.label, profile.tenant
            ))
        })
        .collect()
}

/// `KEY=VALUE[,KEY=VALUE...]`.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!("{pair:?} is not KEY=VALUE")),
        })
        .collect()
}

#[path = "explain_cnp.rs"]
pub(crate) mod explain_cnp;

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
