//! ClusterNetworkPolicy in the incremental compiler: compiled again, for this node's pods only
//! (`policy::cluster::compile_for` over the standing peer index), only when a change may alter
//! the result, and only what differs is written. What the result depends on, and so what marks
//! it dirty:
//! - the policies; namespaces (their labels select subjects and peers);
//! - this node's pods (subjects: their labels and named ports);
//! - the set of pod identities in the cluster (peers resolve to identities: a pod whose
//!   identity other pods already have changes nothing);
//! - the address partition (`dirty.all_sets`). Pods' addresses never matter: a `networks`
//!   peer is a range identity, and named ports, which would need the pods inside a range, are
//!   refused with `networks` peers;
//! - Nodes, while a policy has a `nodes` peer: their addresses are ranges of one in the
//!   partition, which a Node's change recounts.
//!
//! So the common event of a large cluster — a pod elsewhere starting or stopping beside
//! others of its kind — costs no compile at all. Without any policy, nothing costs anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use moat_common::maps::{NetworkKey, TierSets, SETTING_CLUSTER_POLICIES};

use super::Incremental;
use crate::compiler::delta::put;
use crate::compiler::policy::cluster;
use crate::compiler::error::CompileError;
use crate::compiler::keys::network_key;
use crate::model::cnp::ClusterNetworkPolicy;
use crate::model::{Change, Node};

impl Incremental {
    /// Takes a ClusterNetworkPolicy change: its networks join or leave the address partition.
    pub(super) fn take_cluster_policy(&mut self, name: String, value: Option<Arc<ClusterNetworkPolicy>>) {
        if self.cluster.apply(Change::ClusterPolicy(name.clone(), value)).is_none() {
            return;
        }
        self.dirty.cluster_policies = true;
        self.recount_cluster_ranges(&name);
    }

    /// Takes a Node change: the policies with `nodes` peers name other addresses now.
    pub(super) fn take_node(&mut self, name: String, value: Option<Node>) {
        if self.cluster.apply(Change::Node(name, value)).is_none() {
            return;
        }
        let naming: Vec<String> = self.cluster.cluster_network_policies.iter().filter(|(_, policy)| cluster::names_nodes(policy)).map(|(name, _)| name.clone()).collect();
        if naming.is_empty() {
            return;
        }
        self.dirty.cluster_policies = true;
        for name in naming {
            self.recount_cluster_ranges(&name);
        }
    }

    /// Counts the ranges policy `name` names now in the partition, and those it named before
    /// out: the new first, so a range both name is never dropped in between.
    fn recount_cluster_ranges(&mut self, name: &str) {
        let new: Vec<NetworkKey> = match self.cluster.cluster_network_policies.get(name) {
            Some(policy) => cluster::networks(&[&**policy], &self.cluster.nodes).iter().map(network_key).collect(),
            None => Vec::new(),
        };
        for range in &new {
            self.count_block(*range, 1);
        }
        let old = if new.is_empty() { self.cluster_ranges.remove(name) } else { self.cluster_ranges.insert(name.to_string(), new) };
        for range in old.unwrap_or_default() {
            self.count_block(range, -1);
        }
    }

    /// A pod's identity changed from `old` to `new` (None: no pod): the policies need a
    /// compile when an identity appears in or leaves the cluster.
    pub(super) fn count_identity(&mut self, old: Option<u64>, new: Option<u64>) {
        if let Some(identity) = old {
            if let Some(count) = self.identities.get_mut(&identity) {
                *count -= 1;
                if *count == 0 {
                    self.identities.remove(&identity);
                    self.dirty.cluster_policies = true;
                }
            }
        }
        if let Some(identity) = new {
            let count = self.identities.entry(identity).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.dirty.cluster_policies = true;
            }
        }
    }

    /// Compiles the ClusterNetworkPolicies again, if a change may have altered them, and
    /// writes what changed in `CNP_SUBJECTS`, `CNP_RULES`, the tier-set index and the
    /// settings flag.
    pub(super) fn settle_cluster_policies(&mut self) -> Result<(), CompileError> {
        let none_before = self.desired.cluster_subjects.is_empty()
            && self.desired.cluster_rules.is_empty()
            && self.desired.index.cluster_sets.is_empty();
        if self.cluster.cluster_network_policies.is_empty() && none_before {
            return Ok(());
        }
        // A local pod came or went (a changed one marks `dirty` in `settle`).
        let subjects_changed = self.cluster_subjects != self.local_pods;
        if !(self.dirty.cluster_policies || self.dirty.all_sets || subjects_changed) {
            return Ok(());
        }
        let policies: Vec<&ClusterNetworkPolicy> =
            self.cluster.cluster_network_policies.values().map(|policy| &**policy).collect();
        let blocks: BTreeMap<NetworkKey, u64> = self.blocks.iter().map(|(range, (id, _))| (*range, *id)).collect();
        let compiled = cluster::compile_for(&self.cluster, &policies, &blocks, &*self, self.local_pods.values())?;
        self.cluster_subjects.clone_from(&self.local_pods);
        let mut subjects: BTreeMap<u64, TierSets> = BTreeMap::new();
        let mut local_sets = BTreeSet::new();
        for (cgroup, key) in &self.local_pods {
            if let Some(sets) = compiled.pod_sets.get(key) {
                subjects.insert(*cgroup, *sets);
                local_sets.extend([sets.ingress, sets.egress]);
            }
        }
        let rules: BTreeMap<_, _> = compiled.rules.into_iter().filter(|((_, key), _)| local_sets.contains(&key.set)).collect();
        replace(&mut self.desired.cluster_subjects, &mut self.journal.cluster_subjects, subjects);
        replace(&mut self.desired.cluster_rules, &mut self.journal.cluster_rules, rules);
        self.desired.index.cluster_sets = compiled.sets.into_iter().filter(|(set, _)| local_sets.contains(set)).collect();
        let flags = if self.desired.cluster_subjects.is_empty() {
            self.desired.flags & !SETTING_CLUSTER_POLICIES
        } else {
            self.desired.flags | SETTING_CLUSTER_POLICIES
        };
        self.journal.flags.get_or_insert(self.desired.flags);
        self.desired.flags = flags;
        Ok(())
    }
}

/// Makes `map` equal `new`, journalling only the keys that differ.
fn replace<K: Ord + Copy, V: Clone + PartialEq>(
    map: &mut BTreeMap<K, V>,
    journal: &mut BTreeMap<K, Option<V>>,
    new: BTreeMap<K, V>,
) {
    let gone: Vec<K> = map.keys().filter(|key| !new.contains_key(*key)).copied().collect();
    for key in gone {
        put(map, journal, key, None);
    }
    for (key, value) in new {
        if map.get(&key) != Some(&value) {
            put(map, journal, key, Some(value));
        }
    }
}
