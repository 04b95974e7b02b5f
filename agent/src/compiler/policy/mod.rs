//! NetworkPolicy → `POLICY_RULES` entries.
//!
//! Pods selected by the same policies (per direction) share a *policy set*; each set gets
//! entries keyed by (set, peer identity, protocol, port prefix). Per-packet cost is a fixed
//! number of trie lookups whatever the number of policies; a change to one policy rewrites
//! only the entries of the sets it belongs to.

pub mod cluster;
mod identity;
pub mod prefixes;
pub mod targets;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use moat_common::maps::{
    NetworkKey, PolicyMatch, IDENTITY_ANY, NOT_ISOLATED, POLICY_FULL_BITS, POLICY_SET_IDENTITY_BITS,
};

use super::keys::network_key;
use crate::config::Cidr;
use crate::model::policy::{Peer, Policy, PortRef, PortRule, Rule};
use crate::model::{Cluster, ContainerPort, Labels, ObjectKey, PodKey, Protocol};

pub use identity::{cidr_identity, pod_identity};
use prefixes::{port_blocks, PROTOCOL_BITS};
use targets::Pods;
pub use targets::{PeerIndex, PodView, Target};

pub use crate::model::policy::Direction;

/// A rule of a policy: `namespace/name` plus direction and index, as explain prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: ObjectKey,
    pub direction: Direction,
    pub index: usize,
}

/// A key of the trie: prefix length and the (masked) match data.
pub type RuleKey = (u32, PolicyMatch);

/// The rules giving an entry, sorted and without duplicates: nearly always one, so a slice
/// (one small allocation) rather than a B-tree set, whose node is sized for eleven.
pub type RuleRefs = Box<[RuleRef]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySet {
    pub direction: Direction,
    pub policies: Vec<ObjectKey>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub pod_identity: BTreeMap<PodKey, u64>,
    /// (ingress set, egress set) per pod, `NOT_ISOLATED` where no policy selects it.
    pub pod_sets: BTreeMap<PodKey, (u64, u64)>,
    pub sets: BTreeMap<u64, PolicySet>,
    /// Every entry, with the rules that produced it.
    pub rules: BTreeMap<RuleKey, BTreeSet<RuleRef>>,
    /// Address ranges named by ipBlocks, with their identities.
    pub blocks: BTreeMap<NetworkKey, u64>,
}

pub(crate) struct PodFacts<'a> {
    key: &'a PodKey,
    labels: &'a Labels,
    ports: &'a [ContainerPort],
    ips: &'a [IpAddr],
    identity: u64,
}

/// Compiles every policy in the cluster. `config_networks` are the config's address ranges,
/// which take part in the partition of the address space like ipBlocks. Cannot fail: the
/// sources refuse a policy that would not make sense (selectors are checked in the model).
pub fn compile(cluster: &Cluster, config_networks: &[Cidr]) -> Compiled {
    let policies: Vec<&Policy> = cluster.network_policies.values().map(|policy| &**policy).collect();
    let mut out = Compiled::default();
    let pods = pod_facts(cluster);
    for pod in &pods {
        out.pod_identity.insert(pod.key.clone(), pod.identity);
    }
    out.blocks = block_identities(&policies, config_networks);

    // A policy selects pods of its own namespace only.
    let mut policies_by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, policy) in policies.iter().enumerate() {
        policies_by_namespace
            .entry(&*policy.key.namespace)
            .or_default()
            .push(index);
    }
    let indexed = Pods::new(&pods, cluster);
    let indexed: &dyn PeerIndex = &indexed;
    let mut cache = targets::Cache::new();

    // Which policies select each pod, per direction → sets.
    let mut set_members: BTreeMap<u64, (Direction, Vec<usize>, &PodFacts)> = BTreeMap::new();
    for pod in &pods {
        let mut ids = [NOT_ISOLATED, NOT_ISOLATED];
        for (slot, direction) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let mut selecting = Vec::new();
            for index in policies_by_namespace
                .get(&*pod.key.namespace)
                .into_iter()
                .flatten()
                .copied()
            {
                if selects(policies[index], direction, pod.labels) {
                    selecting.push(index);
                }
            }
            if selecting.is_empty() {
                continue;
            }
            let id = set_id(
                direction,
                selecting.iter().map(|i| &policies[*i].key),
                pod.ports,
            );
            ids[slot] = id;
            set_members.entry(id).or_insert((direction, selecting, pod));
        }
        out.pod_sets.insert(pod.key.clone(), (ids[0], ids[1]));
    }

    for (set, (direction, selecting, representative)) in &set_members {
        out.sets.insert(
            *set,
            PolicySet {
                direction: *direction,
                policies: selecting.iter().map(|i| policies[*i].key.clone()).collect(),
            },
        );
        for policy_index in selecting {
            let policy = &policies[*policy_index];
            for (index, rule) in rules_of(policy, *direction).iter().enumerate() {
                let rule_ref = RuleRef {
                    policy: policy.key.clone(),
                    direction: *direction,
                    index,
                };
                let targets = targets::cached(
                    &mut cache,
                    (*policy_index, *direction, index),
                    policy,
                    rule,
                    indexed,
                    &out.blocks,
                );
                rule_entries(
                    *set,
                    rule,
                    rule_ref,
                    targets,
                    representative.ports,
                    indexed,
                    &mut out.rules,
                );
            }
        }
    }
    out
}

/// What the rules need of every pod (hostNetwork pods have no address of their own).
fn pod_facts(cluster: &Cluster) -> Vec<PodFacts<'_>> {
    cluster
        .pods
        .iter()
        .map(|(key, pod)| PodFacts {
            key,
            labels: &pod.labels,
            ports: &pod.ports,
            ips: if pod.host_network { &[] } else { &pod.ips },
            identity: pod_identity(&key.namespace, &pod.labels, &pod.ports),
        })
        .collect()
}

/// The rules of `policy` in `direction`.
pub fn rules_of(policy: &Policy, direction: Direction) -> &[Rule] {
    match direction {
        Direction::Ingress => policy.ingress.as_deref().unwrap_or_default(),
        Direction::Egress => policy.egress.as_deref().unwrap_or_default(),
    }
}

/// Whether `policy` selects a pod with `labels` for `direction`.
pub fn selects(policy: &Policy, direction: Direction, labels: &Labels) -> bool {
    let affects = match direction {
        Direction::Ingress => policy.ingress.is_some(),
        Direction::Egress => policy.egress.is_some(),
    };
    affects && policy.pod_selector.matches(labels)
}

/// The id of the set of `policies` (in key order) selecting a pod with `ports` in `direction`.
pub fn set_id<'a>(
    direction: Direction,
    policies: impl IntoIterator<Item = &'a ObjectKey>,
    ports: &[ContainerPort],
) -> u64 {
    let names: Vec<u8> = policies
        .into_iter()
        .flat_map(|key| format!("{key}\0").into_bytes())
        .collect();
    // Ingress named ports resolve on the selected pod itself, so its named ports are part of
    // what the set means.
    let ports = if direction == Direction::Ingress {
        identity::named_ports_bytes(ports)
    } else {
        Vec::new()
    };
    identity::hash_id(&[direction.as_str().as_bytes(), &names, &ports])
}

/// The entries one rule (`rule_ref`) gives set `set`, whose pods have `selected_ports`.
pub fn rule_entries(
    set: u64,
    rule: &Rule,
    rule_ref: RuleRef,
    targets: &[Target],
    selected_ports: &[ContainerPort],
    index: &dyn PeerIndex,
    out: &mut BTreeMap<RuleKey, BTreeSet<RuleRef>>,
) {
    for (target, ports) in expand(rule, targets, rule_ref.direction, selected_ports, index) {
        for key in keys(set, target, &ports) {
            out.entry(key).or_default().insert(rule_ref.clone());
        }
    }
}

/// Whether pods inside `rule`'s ipBlocks give entries of their own: only an egress rule's
/// named ports resolve on them (`expand`). Otherwise an ipBlock is its ranges alone, and
/// tracking every pod inside a cluster-wide block (0.0.0.0/0 on 443 is common) cost a
/// contribution per pod per rule: 24 MB at 100k pods.
pub fn pods_in_blocks_matter(rule: &Rule, direction: Direction) -> bool {
    direction == Direction::Egress
        && rule.ports.iter().flatten().any(|port| matches!(port.port, PortRef::Named(_)))
}

/// The address ranges `policy`'s ipBlocks name (cidrs and excepts).
pub fn block_ranges(policy: &Policy) -> Vec<NetworkKey> {
    let mut ranges = Vec::new();
    for rule in policy
        .ingress
        .iter()
        .flatten()
        .chain(policy.egress.iter().flatten())
    {
        for peer in rule.peers.iter().flatten() {
            if let Peer::Block { cidr, except } = peer {
                ranges.push(network_key(cidr));
                ranges.extend(except.iter().map(network_key));
            }
        }
    }
    ranges
}

/// What one target may reach: numbered (protocol, port range) pairs, or every port.
enum Ports {
    All,
    Some(Vec<(Protocol, Option<(u16, u16)>)>),
}

/// Pairs each target with the ports it may use, resolving named ports on the destination:
/// the selected pod for ingress, the peer for egress.
fn expand(
    rule: &Rule,
    targets: &[Target],
    direction: Direction,
    selected_ports: &[ContainerPort],
    index: &dyn PeerIndex,
) -> Vec<(u64, Ports)> {
    let mut out = Vec::new();
    let Some(port_rules) = &rule.ports else {
        for target in targets {
            match target {
                Target::Any => out.push((IDENTITY_ANY, Ports::All)),
                Target::Pod(pod) => out.push((pod.identity, Ports::All)),
                Target::Block(id) => out.push((*id, Ports::All)),
                Target::PodInBlock(_) => {}
            }
        }
        return out;
    };
    let numbered: Vec<(Protocol, Option<(u16, u16)>)> =
        port_rules.iter().filter_map(numbered_port).collect();
    let named: Vec<&PortRule> = port_rules
        .iter()
        .filter(|rule| matches!(rule.port, PortRef::Named(_)))
        .collect();
    for target in targets {
        let identity = match target {
            Target::Any => IDENTITY_ANY,
            Target::Pod(pod) | Target::PodInBlock(pod) => pod.identity,
            Target::Block(id) => *id,
        };
        let mut ports = if matches!(target, Target::PodInBlock(_)) {
            Vec::new()
        } else {
            numbered.clone()
        };
        for rule in &named {
            let PortRef::Named(name) = &rule.port else {
                continue;
            };
            match (direction, target) {
                (Direction::Ingress, Target::PodInBlock(_)) => {}
                (Direction::Ingress, _) => {
                    ports.extend(resolve(selected_ports, name, rule.protocol))
                }
                (Direction::Egress, Target::Pod(pod) | Target::PodInBlock(pod)) => {
                    ports.extend(resolve(pod.ports, name, rule.protocol))
                }
                // A named port can only be resolved on a pod: expand "any peer" to the pods.
                (Direction::Egress, Target::Any) => {}
                (Direction::Egress, Target::Block(_)) => {}
            }
        }
        if !ports.is_empty() {
            out.push((identity, Ports::Some(ports)));
        }
    }
    // Egress to every peer on a named port: each pod that has such a port, by its identity.
    if direction == Direction::Egress && targets.iter().any(|t| matches!(t, Target::Any)) {
        out.extend(index.all().into_iter().filter_map(|pod| named_for_any(&named, pod)));
    }
    out
}

/// What "every peer on a named port" gives one pod: its identity on the ports it names.
fn named_for_any(named: &[&PortRule], pod: PodView) -> Option<(u64, Ports)> {
    let ports: Vec<_> = named
        .iter()
        .filter_map(|rule| match &rule.port {
            PortRef::Named(name) => resolve(pod.ports, name, rule.protocol),
            _ => None,
        })
        .collect();
    (!ports.is_empty()).then_some((pod.identity, Ports::Some(ports)))
}

/// The entries an egress rule without peers gives set `set` for one pod on its named ports
/// (the full compile's "every peer on a named port", one pod at a time).
pub fn any_named_entries(set: u64, rule: &Rule, rule_ref: &RuleRef, pod: PodView, out: &mut Vec<(RuleKey, RuleRef)>) {
    let named: Vec<&PortRule> = rule.ports.iter().flatten().filter(|port| matches!(port.port, PortRef::Named(_))).collect();
    if let Some((identity, ports)) = named_for_any(&named, pod) {
        out.extend(keys(set, identity, &ports).into_iter().map(|key| (key, rule_ref.clone())));
    }
}

fn numbered_port(rule: &PortRule) -> Option<(Protocol, Option<(u16, u16)>)> {
    match rule.port {
        PortRef::Any => Some((rule.protocol, None)),
        PortRef::Range(start, end) => Some((rule.protocol, Some((start, end)))),
        PortRef::Named(_) => None,
    }
}

fn resolve(
    ports: &[ContainerPort],
    name: &str,
    protocol: Protocol,
) -> Option<(Protocol, Option<(u16, u16)>)> {
    ports
        .iter()
        .find(|port| port.name.as_deref() == Some(name) && port.protocol == protocol)
        .map(|port| (protocol, Some((port.port, port.port))))
}

fn keys(set: u64, identity: u64, ports: &Ports) -> Vec<RuleKey> {
    match ports {
        Ports::All => vec![(
            POLICY_SET_IDENTITY_BITS,
            PolicyMatch::new(set, identity, 0, 0),
        )],
        Ports::Some(list) => {
            let mut keys = Vec::new();
            for (protocol, range) in list {
                match range {
                    None => keys.push((
                        PROTOCOL_BITS,
                        PolicyMatch::new(set, identity, protocol.number(), 0),
                    )),
                    Some((start, end)) => {
                        for (port, bits) in port_blocks(*start, *end) {
                            let prefix = PROTOCOL_BITS + bits;
                            keys.push((
                                prefix,
                                prefixes::mask(
                                    &PolicyMatch::new(set, identity, protocol.number(), port),
                                    prefix,
                                ),
                            ));
                        }
                    }
                }
            }
            keys
        }
    }
}

/// Whether range `inner` lies within range `outer`.
pub fn contains(outer: &NetworkKey, inner: &NetworkKey) -> bool {
    if inner.prefix_len < outer.prefix_len {
        return false;
    }
    let masked = network_key_masked(inner, outer.prefix_len);
    masked == outer.addr
}

fn network_key_masked(key: &NetworkKey, prefix_len: u32) -> [u8; 16] {
    let mut addr = key.addr;
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = prefix_len.saturating_sub(i as u32 * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    addr
}

/// Every address range that takes part in the partition: ipBlock CIDRs and excepts, and the
/// config's networks. Each gets its own identity.
fn block_identities(policies: &[&Policy], config_networks: &[Cidr]) -> BTreeMap<NetworkKey, u64> {
    let mut ranges: BTreeSet<NetworkKey> = config_networks.iter().map(network_key).collect();
    for policy in policies {
        ranges.extend(block_ranges(policy));
    }
    ranges
        .into_iter()
        .map(|key| (key, cidr_identity(&key)))
        .collect()
}

/// Whether a full-length key is covered by any entry (what an LPM lookup finds), and which
/// rules the covering entries came from.
pub fn covering_rules<'a>(
    rules: &'a BTreeMap<RuleKey, RuleRefs>,
    key: &PolicyMatch,
) -> Vec<&'a RuleRef> {
    let mut found = Vec::new();
    for prefix in std::iter::once(POLICY_SET_IDENTITY_BITS).chain(PROTOCOL_BITS..=POLICY_FULL_BITS)
    {
        if let Some(refs) = rules.get(&(prefix, prefixes::mask(key, prefix))) {
            found.extend(refs.iter());
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;
