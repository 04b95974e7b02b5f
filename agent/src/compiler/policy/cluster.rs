//! ClusterNetworkPolicy → tier sets (`CNP_SUBJECTS`) and their entries (`CNP_RULES`).
//!
//! A pod's *tier set*, per direction, is the ordered list of the rules of every policy whose
//! subject selects it — Admin by priority then name, then Baseline — numbered by position.
//! Peers and ports resolve exactly as NetworkPolicy's do (`targets`, `expand`, `keys`), so each
//! rule gives entries keyed like `POLICY_RULES`. Each entry then holds, per tier, the first
//! rule over every entry whose prefix contains it: for any port, every rule that matches it
//! has an entry containing the longest entry that does, so the one value a longest-prefix
//! lookup finds is the first matching rule (see `first_over_prefixes`).

use std::collections::{BTreeMap, HashMap};

use moat_common::maps::{
    PolicyMatch, TierMatch, TierSets, NOT_ISOLATED, POLICY_SET_IDENTITY_BITS, TIER_ACCEPT, TIER_DENY,
    TIER_NO_RULE, TIER_PASS,
};

use super::identity::{hash_id, named_ports_bytes};
use super::prefixes::{mask, PROTOCOL_BITS};
use super::targets::{self, namespace_labels, PeerIndex, Pods};
use super::{expand, keys, pod_facts, Direction, Ports, RuleKey};
use crate::config::Cidr;
use crate::model::cnp::{Action, ClusterNetworkPolicy, Peer as CnpPeer, PodSet, PortMatch, Tier};
use crate::model::cnp_eval::RuleRef;
use crate::model::policy::{Peer, PortRef, PortRule, Rule};
use crate::model::selector::{Selector, SelectorError};
use crate::model::{Cluster, ContainerPort, Labels, Node, PodKey, Protocol};
use moat_common::maps::NetworkKey;

/// The rules of one tier set, by position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSet {
    pub direction: Direction,
    pub rules: Vec<RuleRef>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// Tier sets per pod that some policy's subject selects.
    pub pod_sets: BTreeMap<PodKey, TierSets>,
    pub sets: BTreeMap<u64, TierSet>,
    pub rules: BTreeMap<RuleKey, TierMatch>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ClusterNetworkPolicy {policy}: {field}: {error}")]
pub struct ClusterPolicyError {
    pub policy: String,
    pub field: String,
    pub error: Box<SelectorError>,
}

/// The address ranges `policies` name: their networks, and each address of the Nodes their
/// `nodes` peers select as a range of one. They join the partition of the address space that
/// ipBlocks make, so an address's range identity serves both.
pub fn networks(policies: &[&ClusterNetworkPolicy], nodes: &BTreeMap<String, Node>) -> Vec<Cidr> {
    let rules = policies.iter().flat_map(|policy| policy.ingress.iter().chain(&policy.egress));
    let mut out = Vec::new();
    for peer in rules.flat_map(|rule| &rule.peers) {
        match peer {
            CnpPeer::Networks(cidrs) => out.extend_from_slice(cidrs),
            // The parser checked the selector: one that does not compile selects nothing.
            CnpPeer::Nodes(selector) => {
                if let Ok(selector) = Selector::from_api(selector) {
                    out.extend(node_addresses(&selector, nodes));
                }
            }
            CnpPeer::Pods(_) => {}
        }
    }
    out
}

/// Whether `policy` has a `nodes` peer (its ranges then follow the Nodes).
pub fn names_nodes(policy: &ClusterNetworkPolicy) -> bool {
    policy.ingress.iter().chain(&policy.egress).flat_map(|rule| &rule.peers).any(|peer| matches!(peer, CnpPeer::Nodes(_)))
}

/// The addresses, as ranges of one, of the Nodes `selector` selects.
fn node_addresses<'a>(selector: &'a Selector, nodes: &'a BTreeMap<String, Node>) -> impl Iterator<Item = Cidr> + 'a {
    nodes
        .values()
        .filter(|node| selector.matches(&node.labels))
        .flat_map(|node| &node.addresses)
        .map(|ip| Cidr { addr: *ip, prefix_len: if ip.is_ipv4() { 32 } else { 128 } })
}

/// One policy, its selectors compiled and its rules in NetworkPolicy's form.
struct Prepared<'a> {
    policy: &'a ClusterNetworkPolicy,
    subject: (Selector, Option<Selector>),
    /// Ingress, egress.
    rules: [Vec<(Rule, Action)>; 2],
}

/// Compiles `policies` for every pod of `cluster`; `blocks` is the address partition (which
/// must hold `networks(policies, &cluster.nodes)`).
pub fn compile(
    cluster: &Cluster,
    policies: &[&ClusterNetworkPolicy],
    blocks: &BTreeMap<NetworkKey, u64>,
) -> Result<Compiled, ClusterPolicyError> {
    if policies.is_empty() {
        return Ok(Compiled::default());
    }
    let pods = pod_facts(cluster);
    let indexed = Pods::new(&pods, cluster);
    compile_for(cluster, policies, blocks, &indexed, cluster.pods.keys())
}

/// Compiles `policies` for the pods `subjects` (this node's, for the kernel: the tier sets of
/// other pods are never looked up here), their peers resolved over `peers`, which must index
/// every pod of `cluster`.
pub fn compile_for<'k>(
    cluster: &Cluster,
    policies: &[&ClusterNetworkPolicy],
    blocks: &BTreeMap<NetworkKey, u64>,
    peers: &dyn PeerIndex,
    subjects: impl IntoIterator<Item = &'k PodKey>,
) -> Result<Compiled, ClusterPolicyError> {
    let mut ordered: Vec<&ClusterNetworkPolicy> = policies.to_vec();
    ordered.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
    let prepared = ordered.into_iter().map(|policy| prepare(policy, &cluster.nodes)).collect::<Result<Vec<_>, _>>()?;
    let mut out = Compiled::default();
    if prepared.is_empty() {
        return Ok(out);
    }
    let mut members: BTreeMap<u64, (Direction, Vec<usize>, &[ContainerPort])> = BTreeMap::new();
    let mut namespaces: BTreeMap<&str, Labels> = BTreeMap::new();
    for key in subjects {
        // Host-network pods are never subjects (the API says so).
        let Some(pod) = cluster.pods.get(key).filter(|pod| !pod.host_network) else { continue };
        let namespace = &*key.namespace;
        let labels = namespaces.entry(namespace).or_insert_with(|| {
            namespace_labels(cluster.namespaces.get(namespace).map(|ns| &ns.labels), namespace)
        });
        let mut ids = [NOT_ISOLATED; 2];
        for (slot, direction) in [Direction::Ingress, Direction::Egress].into_iter().enumerate() {
            let selecting: Vec<usize> = (0..prepared.len())
                .filter(|i| !prepared[*i].rules[slot].is_empty() && selects(&prepared[*i].subject, labels, &pod.labels))
                .collect();
            if selecting.is_empty() {
                continue;
            }
            ids[slot] = set_id(direction, selecting.iter().map(|i| prepared[*i].policy), &pod.ports);
            members.entry(ids[slot]).or_insert((direction, selecting, &pod.ports));
        }
        if ids != [NOT_ISOLATED; 2] {
            out.pod_sets.insert(key.clone(), TierSets { ingress: ids[0], egress: ids[1] });
        }
    }
    let mut renamed: BTreeMap<u64, u64> = BTreeMap::new();
    // A rule's peers resolve alike in every set that holds it (on ingress, for subjects with
    // the same named ports): resolved once per compile.
    let mut expanded: HashMap<RuleInSet, Vec<(u64, Ports)>> = HashMap::new();
    for (set, (direction, selecting, ports)) in members {
        let slot = usize::from(direction == Direction::Egress);
        let named = if direction == Direction::Ingress { named_ports_bytes(ports) } else { Vec::new() };
        let mut entries: BTreeMap<RuleKey, TierMatch> = BTreeMap::new();
        let mut refs = Vec::new();
        for (which, prepared) in selecting.iter().map(|i| (*i, &prepared[*i])) {
            let policy = prepared.policy;
            for (index, (rule, action)) in prepared.rules[slot].iter().enumerate() {
                let position = u32::try_from(refs.len()).unwrap_or(u32::MAX >> 2);
                refs.push(RuleRef {
                    tier: policy.tier,
                    policy: policy.name.clone(),
                    priority: policy.priority,
                    index,
                    name: policy_rules(policy, direction)[index].name.clone(),
                    action: *action,
                });
                let encoded = TierMatch::rule(position, tier_action(*action));
                let value = match policy.tier {
                    Tier::Admin => TierMatch { admin: encoded, baseline: TIER_NO_RULE },
                    Tier::Baseline => TierMatch { admin: TIER_NO_RULE, baseline: encoded },
                };
                let resolved = expanded.entry((which, slot, index, named.clone())).or_insert_with(|| {
                    // Every peer of a ClusterNetworkPolicy names its namespaces.
                    let targets = targets::targets("", rule, direction, peers, blocks);
                    expand(rule, &targets, direction, ports, peers)
                });
                for (identity, matched) in resolved.iter() {
                    for key in keys(set, *identity, matched) {
                        let entry = entries.entry(key).or_insert(TierMatch::NONE);
                        *entry = entry.first(value);
                    }
                }
            }
        }
        // The final id hashes what the set holds, so no change rewrites a set in place: the
        // kernel gets the new set's entries, then each pod switches to it at once, and the
        // old set's entries go last. A pod never sees half of a change.
        let entries = first_over_prefixes(&entries);
        let id = hash_id(&[b"cnp-set", &set.to_le_bytes(), &content(&entries, &refs)]);
        renamed.insert(set, id);
        out.rules.extend(entries.into_iter().map(|((prefix, mut data), value)| {
            data.set = id;
            ((prefix, data), value)
        }));
        out.sets.insert(id, TierSet { direction, rules: refs });
    }
    for sets in out.pod_sets.values_mut() {
        for id in [&mut sets.ingress, &mut sets.egress] {
            *id = renamed.get(id).copied().unwrap_or(NOT_ISOLATED);
        }
    }
    Ok(out)
}

/// A rule as a set sees it: (policy, direction slot, rule index, the subjects' named ports on
/// ingress).
type RuleInSet = (usize, usize, usize, Vec<u8>);

/// An entry of `CNP_RULES`: prefix length, key, value.
type PrefixEntry = (u32, PolicyMatch, TierMatch);

/// Each entry's value made the first rule over it and every entry containing it. Every prefix
/// is at least set and identity long, so entries that contain one another share both: each is
/// compared with the few of its identity only.
fn first_over_prefixes(entries: &BTreeMap<RuleKey, TierMatch>) -> Vec<(RuleKey, TierMatch)> {
    let mut by_identity: HashMap<(u64, u64), Vec<PrefixEntry>> = HashMap::new();
    for ((prefix, data), value) in entries {
        by_identity.entry((data.set, data.identity)).or_default().push((*prefix, *data, *value));
    }
    entries
        .iter()
        .map(|((prefix, data), value)| {
            let same = by_identity.get(&(data.set, data.identity)).into_iter().flatten();
            let first = same
                .filter(|(len, outer, _)| len < prefix && (*len == POLICY_SET_IDENTITY_BITS || *len >= PROTOCOL_BITS) && mask(data, *len) == *outer)
                .fold(*value, |first, (_, _, outer)| first.first(*outer));
            ((*prefix, *data), first)
        })
        .collect()
}

/// What a set holds, as bytes for its id: every entry (the provisional set id aside, which
/// the id hashes anyway) and its rules.
fn content(entries: &[(RuleKey, TierMatch)], refs: &[RuleRef]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entries.len() * 27 + refs.len() * 64);
    for ((prefix, data), value) in entries {
        bytes.extend_from_slice(&prefix.to_le_bytes());
        bytes.extend_from_slice(&data.identity.to_le_bytes());
        bytes.push(data.protocol);
        bytes.extend_from_slice(&data.port);
        bytes.extend_from_slice(&value.admin.to_le_bytes());
        bytes.extend_from_slice(&value.baseline.to_le_bytes());
    }
    bytes.extend(format!("{refs:?}").into_bytes());
    bytes
}

fn tier_action(action: Action) -> u32 {
    match action {
        Action::Accept => TIER_ACCEPT,
        Action::Deny => TIER_DENY,
        Action::Pass => TIER_PASS,
    }
}

fn policy_rules(policy: &ClusterNetworkPolicy, direction: Direction) -> &[crate::model::cnp::Rule] {
    match direction {
        Direction::Ingress => &policy.ingress,
        Direction::Egress => &policy.egress,
    }
}

fn selects(subject: &(Selector, Option<Selector>), namespace_labels: &Labels, labels: &Labels) -> bool {
    subject.0.matches(namespace_labels) && subject.1.as_ref().is_none_or(|pods| pods.matches(labels))
}

/// The provisional id of the tier set of `policies` (in evaluation order) for a pod with
/// `ports`: their order is part of what the set means, and so, for ingress, are the pod's
/// named ports. The final id also hashes the set's entries (`compile`).
fn set_id<'a>(
    direction: Direction,
    policies: impl IntoIterator<Item = &'a ClusterNetworkPolicy>,
    ports: &[ContainerPort],
) -> u64 {
    let names: Vec<u8> = policies
        .into_iter()
        .flat_map(|p| format!("{}/{}/{}\0", p.tier.as_str(), p.priority, p.name).into_bytes())
        .collect();
    let ports = if direction == Direction::Ingress { named_ports_bytes(ports) } else { Vec::new() };
    hash_id(&[b"cnp", direction.as_str().as_bytes(), &names, &ports])
}

fn prepare<'a>(policy: &'a ClusterNetworkPolicy, nodes: &BTreeMap<String, Node>) -> Result<Prepared<'a>, ClusterPolicyError> {
    let error = |field: String| move |error| ClusterPolicyError { policy: policy.name.clone(), field, error: Box::new(error) };
    let subject = pod_set(&policy.subject).map_err(error("spec.subject".into()))?;
    let mut rules: [Vec<(Rule, Action)>; 2] = Default::default();
    for (slot, (list, field)) in [(&policy.ingress, "ingress"), (&policy.egress, "egress")].into_iter().enumerate() {
        for (index, rule) in list.iter().enumerate() {
            let converted = as_network_rule(rule, nodes).map_err(error(format!("spec.{field}[{index}]")))?;
            rules[slot].push((converted, rule.action));
        }
    }
    Ok(Prepared { policy, subject, rules })
}

fn pod_set(set: &PodSet) -> Result<(Selector, Option<Selector>), SelectorError> {
    Ok((Selector::from_api(&set.namespaces)?, set.pods.as_ref().map(Selector::from_api).transpose()?))
}

/// A ClusterNetworkPolicy rule's peers and ports in NetworkPolicy's form, which the compiler
/// resolves: pods as a peer with both selectors, networks as ipBlocks without exceptions, a
/// named port once per protocol (a container port's name is unique within its pod), `nodes`
/// as an ipBlock per address of each Node selected (none: the peer matches nothing).
fn as_network_rule(rule: &crate::model::cnp::Rule, nodes: &BTreeMap<String, Node>) -> Result<Rule, SelectorError> {
    let mut peers = Vec::new();
    for peer in &rule.peers {
        match peer {
            CnpPeer::Pods(set) => {
                let (namespaces, pods) = pod_set(set)?;
                peers.push(Peer::Pods { namespaces: Some(namespaces), pods });
            }
            CnpPeer::Networks(cidrs) => {
                peers.extend(cidrs.iter().map(|cidr| Peer::Block { cidr: *cidr, except: Vec::new() }));
            }
            CnpPeer::Nodes(selector) => {
                let selector = Selector::from_api(selector)?;
                peers.extend(node_addresses(&selector, nodes).map(|cidr| Peer::Block { cidr, except: Vec::new() }));
            }
        }
    }
    let ports = rule.ports.as_ref().map(|ports| {
        ports
            .iter()
            .flat_map(|port| match port {
                PortMatch::Ports { protocol, start, end } => {
                    vec![PortRule { protocol: *protocol, port: PortRef::Range(*start, *end) }]
                }
                PortMatch::Named(name) => [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                    .into_iter()
                    .map(|protocol| PortRule { protocol, port: PortRef::Named(name.clone()) })
                    .collect(),
            })
            .collect()
    });
    Ok(Rule { peers: Some(peers), ports })
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
