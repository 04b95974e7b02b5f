//! The ClusterNetworkPolicy evaluation order, as the API defines it, for one direction of one
//! pod-to-pod flow: Admin tier (by priority, then rule order) → NetworkPolicy → Baseline tier →
//! the default. Accept and Deny are final; Pass skips the rest of its tier. This is the
//! specification the datapath must come to match; until it does, `moat explain` shows its
//! answer as what the cluster's policies *would* decide, next to what moat enforces.
//!
//! Policies of one tier with equal priority are taken in name order (the API leaves their
//! order to the implementation; moat's is deterministic).

use std::net::IpAddr;

use super::cnp::{Action, ClusterNetworkPolicy, Peer, PodSet, PortMatch, Tier};
pub use super::policy::Direction;
use super::labels::Labels;
use super::objects::Pod;
use super::selector;

/// A pod at one end of the flow, with its namespace's labels.
#[derive(Clone, Copy, Debug)]
pub struct End<'a> {
    pub pod: &'a Pod,
    pub namespace_labels: &'a Labels,
    /// The address the flow uses for it.
    pub ip: IpAddr,
    /// The labels of the Node that has `ip` among its addresses, if one does (the end is then
    /// a node, or a hostNetwork pod on it).
    pub node: Option<&'a Labels>,
}


/// What the NetworkPolicy tier says for this direction (moat's NetworkPolicy backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkPolicyTier {
    /// No NetworkPolicy selects the pod for this direction: evaluation goes on.
    NotSelected,
    Allowed,
    Denied,
}

/// One rule that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub tier: Tier,
    pub policy: String,
    pub priority: u16,
    pub index: usize,
    pub name: Option<String>,
    pub action: Action,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tier, ClusterNetworkPolicy {} (priority {}), rule {}", self.tier.as_str(), self.policy, self.priority, self.index)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        write!(f, ": {}", self.action.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decider {
    /// An Accept or Deny rule of a ClusterNetworkPolicy.
    Rule(RuleRef),
    /// The NetworkPolicies selecting the pod.
    NetworkPolicy,
    /// No tier decided: allowed.
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub decider: Decider,
    /// Pass rules that sent evaluation on to the next tier, in order.
    pub passed: Vec<RuleRef>,
}

/// Decides `direction` at `local` (the subject side) for traffic with `remote`, protocol
/// number `protocol` and destination port `port`; `destination` resolves named ports.
pub fn decide(
    policies: &[ClusterNetworkPolicy],
    direction: Direction,
    local: End<'_>,
    remote: End<'_>,
    protocol: u8,
    port: u16,
    network_policy: NetworkPolicyTier,
) -> Decision {
    let destination = if direction == Direction::Ingress { local.pod } else { remote.pod };
    let mut ordered: Vec<&ClusterNetworkPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
    let mut passed = Vec::new();
    let tier_of = |tier: Tier, passed: &mut Vec<RuleRef>| -> Option<RuleRef> {
        for policy in ordered.iter().filter(|p| p.tier == tier && selects(&p.subject, &local)) {
            let rules = if direction == Direction::Ingress { &policy.ingress } else { &policy.egress };
            for (index, rule) in rules.iter().enumerate() {
                let peer = rule.peers.iter().any(|peer| peer_matches(peer, &remote));
                let ports = rule.ports.as_ref().is_none_or(|ports| ports.iter().any(|m| port_matches(m, destination, protocol, port)));
                if !(peer && ports) {
                    continue;
                }
                let matched = RuleRef { tier, policy: policy.name.clone(), priority: policy.priority, index, name: rule.name.clone(), action: rule.action };
                if rule.action == Action::Pass {
                    passed.push(matched);
                    return None;
                }
                return Some(matched);
            }
        }
        None
    };
    let decided = |rule: RuleRef, passed: Vec<RuleRef>| Decision { allowed: rule.action == Action::Accept, decider: Decider::Rule(rule), passed };
    if let Some(rule) = tier_of(Tier::Admin, &mut passed) {
        return decided(rule, passed);
    }
    match network_policy {
        NetworkPolicyTier::Allowed => return Decision { allowed: true, decider: Decider::NetworkPolicy, passed },
        NetworkPolicyTier::Denied => return Decision { allowed: false, decider: Decider::NetworkPolicy, passed },
        NetworkPolicyTier::NotSelected => {}
    }
    if let Some(rule) = tier_of(Tier::Baseline, &mut passed) {
        return decided(rule, passed);
    }
    Decision { allowed: true, decider: Decider::Default, passed }
}

/// Host-network pods are never subjects or pod peers (the API says so).
fn selects(set: &PodSet, end: &End<'_>) -> bool {
    let matches = |selector, labels| selector::matches(selector, labels).unwrap_or(false);
    !end.pod.host_network && matches(&set.namespaces, end.namespace_labels) && set.pods.as_ref().is_none_or(|pods| matches(pods, &end.pod.labels))
}

fn peer_matches(peer: &Peer, remote: &End<'_>) -> bool {
    match peer {
        Peer::Pods(set) => selects(set, remote),
        Peer::Networks(cidrs) => cidrs.iter().any(|cidr| contains(cidr, remote.ip)),
        Peer::Nodes(selector) => remote.node.is_some_and(|labels| selector::matches(selector, labels).unwrap_or(false)),
    }
}

fn port_matches(matcher: &PortMatch, destination: &Pod, protocol: u8, port: u16) -> bool {
    match matcher {
        PortMatch::Ports { protocol: p, start, end } => p.number() == protocol && (*start..=*end).contains(&port),
        PortMatch::Named(name) => destination
            .ports
            .iter()
            .any(|c| c.name.as_deref() == Some(name.as_str()) && c.protocol.number() == protocol && c.port == port),
    }
}

fn contains(cidr: &super::cidr::Cidr, ip: IpAddr) -> bool {
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()) << 96, 32),
        IpAddr::V6(v6) => (v6.to_bits(), 128),
    };
    let ((net, width), (addr, other)) = (bits(cidr.addr), bits(ip));
    if width != other {
        return false;
    }
    let len = u32::from(cidr.prefix_len);
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    (net & mask) == (addr & mask)
}

#[cfg(test)]
#[path = "cnp_eval_tests.rs"]
mod tests;
