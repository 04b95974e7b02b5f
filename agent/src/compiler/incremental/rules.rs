//! The entries of this node's policy sets, kept per contribution: each (rule, kind of target,
//! pod identity) counts the pods that make it a target, each entry counts the contributions
//! giving it. A pod event adjusts the counts of the rules that cover its old or new version
//! and writes only the entries whose count reaches or leaves zero; a namespace relabel does
//! the same for the pods of that namespace. A set is evaluated whole only when it appears,
//! when one of its policies changes, or when the ipBlock partition changes.

use std::collections::BTreeMap;

use moat_common::maps::NetworkKey;

use super::compact::Pack;
use super::Incremental;
use crate::compiler::keys::network_key;
use crate::compiler::policy::targets::{host_key, in_block, namespace_labels};
use crate::compiler::policy::{
    self, Direction, PeerIndex, PodView, RuleKey, RuleRef, RuleRefs, Target,
};
use crate::model::policy::{Peer, Policy, PortRef, Rule};
use crate::model::{Labels, Pod, PodKey};

/// How a pod is a target of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// Selected by a pod/namespace selector peer.
    Pod,
    /// Inside an ipBlock peer.
    InBlock,
    /// Named ports of "every peer" in an egress rule.
    AnyNamed,
}

/// The entries of one local set, with their counts. Its rules are numbered (`rules`), and
/// contributions and entries name a rule by number: 4 bytes where a `RuleRef` is 48, and
/// these maps are most of the agent's memory for the policies of its pods. An entry's
/// rules are a sorted vector, nearly always of one, rather than a B-tree node sized for 11.
#[derive(Default)]
pub(super) struct SetRules {
    rules: Vec<RuleRef>,
    contributions: BTreeMap<(u32, Kind, u64), u32>,
    entries: BTreeMap<RuleKey, Vec<(u32, u32)>>,
}

impl SetRules {
    /// `rule`'s number in this set, numbering it if it is new. A set has the rules of a few
    /// policies, so a scan is enough.
    fn number(&mut self, rule: &RuleRef) -> u32 {
        if let Some(position) = self.rules.iter().position(|known| known == rule) {
            return position as u32;
        }
        self.rules.push(rule.clone());
        (self.rules.len() - 1) as u32
    }

    /// Its counts are inserted rule by rule, pod by pod: after a list, packed like the other
    /// maps that grow with the cluster (at 100k pods they were the largest of all).
    pub(super) fn pack(&mut self) {
        self.contributions.pack();
        self.entries.pack();
    }

    /// The rules giving `refs`, as the maps' desired state names them (sorted).
    fn named(&self, refs: &[(u32, u32)]) -> RuleRefs {
        let mut named: Vec<RuleRef> = refs.iter().filter_map(|(number, _)| self.rules.get(*number as usize).cloned()).collect();
        named.sort_unstable();
        named.into_boxed_slice()
    }
}

/// An index without pods: what a rule gives whatever the pods are (every peer, ipBlocks).
struct NoPods;

impl PeerIndex for NoPods {
    fn namespaces(&self) -> Vec<(&str, &Labels)> {
        Vec::new()
    }
    fn in_namespace(&self, _: &str) -> Vec<PodView<'_>> {
        Vec::new()
    }
    fn in_block(&self, _: &NetworkKey, _: &[NetworkKey]) -> Vec<PodView<'_>> {
        Vec::new()
    }
    fn all(&self) -> Vec<PodView<'_>> {
        Vec::new()
    }
}

/// The kinds by which `pod`, in a namespace labelled `labels`, is a target of `rule`.
fn kinds(
    policy: &Policy,
    direction: Direction,
    rule: &Rule,
    pod: &Pod,
    labels: &Labels,
) -> Vec<Kind> {
    let Some(peers) = &rule.peers else {
        let named = rule.ports.iter().flatten().any(|port| match &port.port {
            PortRef::Named(name) => pod
                .ports
                .iter()
                .any(|p| p.name.as_deref() == Some(name) && p.protocol == port.protocol),
            _ => false,
        });
        return if direction == Direction::Egress && named {
            vec![Kind::AnyNamed]
        } else {
            Vec::new()
        };
    };
    let mut out = Vec::new();
    let selected = peers.iter().any(|peer| match peer {
        Peer::Pods { namespaces, pods } => {
            let namespace_ok = match namespaces {
                None => pod.key.namespace == policy.key.namespace,
                Some(sel) => sel.matches(labels),
            };
            namespace_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
        }
        Peer::Block { .. } => false,
    });
    if selected {
        out.push(Kind::Pod);
    }
    if !policy::pods_in_blocks_matter(rule, direction) {
        return out;
    }
    let hosts: Vec<NetworkKey> = if pod.host_network {
        Vec::new()
    } else {
        pod.ips.iter().map(|ip| host_key(*ip)).collect()
    };
    let inside = peers.iter().any(|peer| match peer {
        Peer::Block { cidr, except } => {
            let outer = network_key(cidr);
            let excluded: Vec<NetworkKey> = except.iter().map(network_key).collect();
            hosts.iter().any(|host| in_block(host, &outer, &excluded))
        }
        Peer::Pods { .. } => false,
    });
    if inside {
        out.push(Kind::InBlock);
    }
    out
}

/// One change to a contribution's count, with the entries it gives.
struct Step {
    set: u64,
    contribution: (RuleRef, Kind, u64),
    by: i32,
    entries: Vec<(RuleKey, RuleRef)>,
}

impl Incremental {
    fn entries_of(
        &self,
        set: u64,
        rule: &Rule,
        rule_ref: &RuleRef,
        kind: Kind,
        view: PodView,
    ) -> Vec<(RuleKey, RuleRef)> {
        let Some(state) = self.sets.get(&set) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match kind {
            Kind::AnyNamed => policy::any_named_entries(set, rule, rule_ref, view, &mut out),
            Kind::Pod | Kind::InBlock => {
                let target = if kind == Kind::Pod {
                    Target::Pod(view)
                } else {
                    Target::PodInBlock(view)
                };
                let mut map = BTreeMap::new();
                policy::rule_entries(
                    set,
                    rule,
                    rule_ref.clone(),
                    &[target],
                    &state.ports,
                    &NoPods,
                    &mut map,
                );
                out.extend(
                    map.into_iter()
                        .flat_map(|(key, refs)| refs.into_iter().map(move |r| (key, r))),
                );
            }
        }
        out
    }

    /// The steps for `pod` (with `identity`, in a namespace labelled `labels`) entering
    /// (`by` 1) or leaving (-1) the targets of every local set's rules; `only_namespace_selectors`
    /// limits them to rules that select namespaces by labels.
    fn steps(
        &self,
        pod: &Pod,
        identity: u64,
        labels: &Labels,
        by: i32,
        only_namespace_selectors: bool,
        out: &mut Vec<Step>,
    ) {
        let view = PodView {
            identity,
            labels: &pod.labels,
            ports: &pod.ports,
        };
        for set in self.set_rules.keys() {
            if self.dirty.sets.contains(set) {
                continue;
            }
            let Some(state) = self.sets.get(set) else {
                continue;
            };
            for policy_key in &state.set.policies {
                let Some(policy) = self.policies.get(policy_key) else {
                    continue;
                };
                for (index, rule) in policy::rules_of(policy, state.set.direction)
                    .iter()
                    .enumerate()
                {
                    if only_namespace_selectors
                        && !rule.peers.iter().flatten().any(|peer| {
                            matches!(
                                peer,
                                Peer::Pods {
                                    namespaces: Some(_),
                                    ..
                                }
                            )
                        })
                    {
                        continue;
                    }
                    let rule_ref = RuleRef {
                        policy: policy_key.clone(),
                        direction: state.set.direction,
                        index,
                    };
                    for kind in kinds(policy, state.set.direction, rule, pod, labels) {
                        let entries = self.entries_of(*set, rule, &rule_ref, kind, view);
                        out.push(Step {
                            set: *set,
                            contribution: (rule_ref.clone(), kind, identity),
                            by,
                            entries,
                        });
                    }
                }
            }
        }
    }

    /// A pod changed from `old` to `new`: adjusts the local sets' contributions.
    pub(super) fn pod_changed(&mut self, old: Option<&Pod>, new: Option<&Pod>) {
        if self.dirty.all_sets || self.set_rules.is_empty() {
            return;
        }
        let Some(namespace) = new.or(old).map(|pod| pod.key.namespace.clone()) else {
            return;
        };
        let labels = namespace_labels(
            self.cluster.namespaces.get(&*namespace).map(|ns| &ns.labels),
            &namespace,
        );
        let mut steps = Vec::new();
        // Gains first, so an unchanged contribution never drops to zero on the way.
        if let Some(pod) = new {
            self.steps(
                pod,
                policy::pod_identity(&pod.key.namespace, &pod.labels, &pod.ports),
                &labels,
                1,
                false,
                &mut steps,
            );
        }
        if let Some(pod) = old {
            self.steps(
                pod,
                policy::pod_identity(&pod.key.namespace, &pod.labels, &pod.ports),
                &labels,
                -1,
                false,
                &mut steps,
            );
        }
        self.take_steps(steps);
    }

    /// Namespace `name` relabelled from `old` to `new`: its pods' contributions to rules
    /// that select namespaces.
    pub(super) fn namespace_relabelled(&mut self, name: &str, old: &Labels, new: &Labels) {
        if self.dirty.all_sets || self.set_rules.is_empty() {
            return;
        }
        let keys: Vec<PodKey> = super::in_namespace(&self.cluster.pods, name).cloned().collect();
        let mut steps = Vec::new();
        for key in keys {
            let Some(pod) = self.cluster.pods.get(&key) else {
                continue;
            };
            let identity = policy::pod_identity(&key.namespace, &pod.labels, &pod.ports);
            self.steps(pod, identity, new, 1, true, &mut steps);
            self.steps(pod, identity, old, -1, true, &mut steps);
        }
        self.take_steps(steps);
    }

    fn take_steps(&mut self, steps: Vec<Step>) {
        for step in steps {
            let Some(rules) = self.set_rules.get_mut(&step.set) else {
                continue;
            };
            let (rule_ref, kind, identity) = step.contribution;
            let contribution = (rules.number(&rule_ref), kind, identity);
            let count = rules.contributions.entry(contribution).or_insert(0);
            let before = *count;
            *count = count.saturating_add_signed(step.by);
            let after = *count;
            if after == 0 {
                rules.contributions.remove(&contribution);
            }
            let by = match (before, after) {
                (0, 1..) => 1,
                (1.., 0) => -1,
                _ => continue,
            };
            for (key, rule_ref) in step.entries {
                count_entry(
                    rules,
                    &mut self.desired.policy_rules,
                    &mut self.journal.policy_rules,
                    key,
                    rule_ref,
                    by,
                );
            }
        }
    }

    /// Evaluates local set `set` whole.
    pub(super) fn evaluate(&self, set: u64) -> SetRules {
        let mut out = SetRules::default();
        let Some(state) = self.sets.get(&set) else {
            return out;
        };
        let blocks: BTreeMap<_, u64> = self
            .blocks
            .iter()
            .map(|(range, (identity, _))| (*range, *identity))
            .collect();
        let mut sink = BTreeMap::new();
        for policy_key in &state.set.policies {
            let policy = &self.policies[policy_key];
            for (index, rule) in policy::rules_of(policy, state.set.direction)
                .iter()
                .enumerate()
            {
                let rule_ref = RuleRef {
                    policy: policy_key.clone(),
                    direction: state.set.direction,
                    index,
                };
                // What the rule gives whatever the pods: every peer, ipBlock ranges.
                let fixed = policy::targets::targets(&policy.key.namespace, rule, state.set.direction, &NoPods, &blocks);
                let mut map = BTreeMap::new();
                policy::rule_entries(
                    set,
                    rule,
                    rule_ref.clone(),
                    &fixed,
                    &state.ports,
                    &NoPods,
                    &mut map,
                );
                for (key, refs) in map {
                    for r in refs {
                        count_entry(&mut out, &mut sink, &mut BTreeMap::new(), key, r, 1);
                    }
                }
                // Counted per rule first, keyed by (kind, identity): a few instructions per
                // compare, where a key holding the rule's ObjectKey compares strings.
                let mut counts: BTreeMap<(Kind, u64), u32> = BTreeMap::new();
                // Candidates come a namespace at a time: its labels are looked up once.
                let mut namespace: Option<(&str, &Labels)> = None;
                for key in self.candidates(policy, rule, state.set.direction) {
                    let Some(pod) = self.cluster.pods.get(key) else {
                        continue;
                    };
                    let labels = match namespace {
                        Some((name, labels)) if name == &*key.namespace => labels,
                        _ => {
                            let Some(labels) = self.namespace_labels.get(&*key.namespace) else {
                                continue;
                            };
                            namespace = Some((&key.namespace, labels));
                            labels
                        }
                    };
                    let Some(pod_state) = self.pods.get(key) else {
                        continue;
                    };
                    let view = PodView {
                        identity: pod_state.identity,
                        labels: &pod.labels,
                        ports: &pod.ports,
                    };
                    for kind in kinds(policy, state.set.direction, rule, pod, labels) {
                        let count = counts.entry((kind, pod_state.identity)).or_insert(0);
                        *count += 1;
                        if *count == 1 {
                            for (key, r) in self.entries_of(set, rule, &rule_ref, kind, view) {
                                count_entry(&mut out, &mut sink, &mut BTreeMap::new(), key, r, 1);
                            }
                        }
                    }
                }
                // Each rule is evaluated once, so no (rule, kind, identity) is counted yet.
                let number = out.number(&rule_ref);
                out.contributions
                    .extend(counts.into_iter().map(|((kind, identity), count)| ((number, kind, identity), count)));
            }
        }
        out
    }

    /// Pods that may be targets of `rule`: those of the namespaces its selectors can match,
    /// those inside its ipBlocks where they matter, every pod for "every peer" on named ports.
    /// Without duplicates, borrowed: a rule over a cluster-wide ipBlock has every pod as a
    /// candidate, and a set of 100k cloned keys was most of a compile's time.
    fn candidates(&self, policy: &Policy, rule: &Rule, direction: Direction) -> Vec<&PodKey> {
        let mut out = Vec::new();
        let Some(peers) = &rule.peers else {
            if rule
                .ports
                .iter()
                .flatten()
                .any(|port| matches!(port.port, PortRef::Named(_)))
            {
                out.extend(self.pods.keys());
            }
            return out;
        };
        for peer in peers {
            match peer {
                Peer::Pods {
                    namespaces: None, ..
                } => {
                    out.extend(
                        super::in_namespace(&self.cluster.pods, &policy.key.namespace),
                    );
                }
                Peer::Pods {
                    namespaces: Some(sel),
                    ..
                } => {
                    for (namespace, labels) in &self.namespace_labels {
                        if sel.matches(labels) {
                            out.extend(
                                super::in_namespace(&self.cluster.pods, namespace),
                            );
                        }
                    }
                }
                Peer::Block { cidr, except } if policy::pods_in_blocks_matter(rule, direction) => {
                    let excluded: Vec<NetworkKey> = except.iter().map(network_key).collect();
                    out.extend(self.keys_in_block(&network_key(cidr), &excluded));
                }
                Peer::Block { .. } => {}
            }
        }
        unique(out)
    }

    /// Replaces the entries of local set `set` (`None`: the set is no longer local).
    pub(super) fn replace_rules(&mut self, set: u64, rules: Option<SetRules>) {
        let old = self.set_rules.remove(&set).unwrap_or_default();
        let new_entries = rules.as_ref().map(|rules| &rules.entries);
        for key in old
            .entries
            .keys()
            .filter(|key| !new_entries.is_some_and(|entries| entries.contains_key(*key)))
        {
            self.journal.policy_rules.entry(*key).or_insert(true);
            self.desired.policy_rules.remove(key);
        }
        if let Some(rules) = rules {
            for (key, refs) in &rules.entries {
                self.journal
                    .policy_rules
                    .entry(*key)
                    .or_insert_with(|| self.desired.policy_rules.contains_key(key));
                self.desired.policy_rules.insert(*key, rules.named(refs));
            }
            self.set_rules.insert(set, rules);
        }
    }
}

/// Counts `rule_ref`'s share of `key` up or down, keeping `desired` (and its journal) in step.
fn count_entry(
    rules: &mut SetRules,
    desired: &mut BTreeMap<RuleKey, RuleRefs>,
    journal: &mut BTreeMap<RuleKey, bool>,
    key: RuleKey,
    rule_ref: RuleRef,
    by: i32,
) {
    let number = rules.number(&rule_ref);
    let refs = rules.entries.entry(key).or_default();
    match refs.binary_search_by_key(&number, |(known, _)| *known) {
        Ok(position) => {
            let count = &mut refs[position].1;
            *count = count.saturating_add_signed(by);
            if *count == 0 {
                refs.remove(position);
            }
        }
        Err(position) if by > 0 => refs.insert(position, (number, by.unsigned_abs())),
        Err(_) => {}
    }
    journal
        .entry(key)
        .or_insert_with(|| desired.contains_key(&key));
    let named = rules.entries.get(&key).filter(|refs| !refs.is_empty()).map(|refs| rules.named(refs));
    match named {
        Some(named) => {
            desired.insert(key, named);
        }
        None => {
            rules.entries.remove(&key);
            desired.remove(&key);
        }
    }
}

/// `keys` without duplicates, a namespace's pods together. Sorted by a hash of each part
/// first: 100k keys sorted by their strings were a sixth of a 100k-pod compile.
fn unique(keys: Vec<&PodKey>) -> Vec<&PodKey> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut hashed: Vec<(u64, &PodKey)> = keys
        .into_iter()
        .map(|key| {
            let (namespace, name) = (hasher.hash_one(&*key.namespace), hasher.hash_one(&*key.name));
            (namespace & 0xffff_ffff_0000_0000 | name >> 32, key)
        })
        .collect();
    // Equal keys hash alike, so they end up next to each other; strings are compared only
    // between keys whose hashes are equal.
    hashed.sort_unstable();
    hashed.dedup();
    hashed.into_iter().map(|(_, key)| key).collect()
}
