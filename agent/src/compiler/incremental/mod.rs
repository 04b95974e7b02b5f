//! The incremental compiler: keeps the model and everything derived from it, takes watch
//! events one [`Change`] at a time and works out only what they touch — the pods whose
//! endpoint may change, the addresses whose owner may change, the policy sets of this node
//! whose entries may change — and returns the [`Delta`] of map entries to write.
//!
//! [`super::compile`] stays the specification: after any sequence of changes, [`Incremental::
//! desired`] equals a full compile of the same model (`tests.rs` checks it over thousands of
//! random event sequences). The standing state, per object:
//! - pods: identity, policy sets, shared group and endpoint; addresses → the pods claiming
//!   them (two tenants on one address make it pending, as in the full compile);
//! - namespaces: tenant and labels; Services: ClusterIP → the Services claiming it;
//!   policies: normalized, by namespace; ipBlock ranges, counted; every policy set in the
//!   cluster, counted by member pods;
//! - this node: cgroup → pod, and the entries of the sets its pods use — the only sets whose
//!   rules are evaluated, so policies that select no local pod cost one selector check per
//!   pod of their namespace and nothing more.
//!
//! A change that does not compile (a tenant id collision, a map over capacity) leaves the
//! last good state and marks the compiler stale: the next change rebuilds it from the model.

mod cluster;
mod compact;
mod peers;
mod rules;
mod settle;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use moat_common::maps::{Endpoint, NetworkKey, TenantPairKey, ENDPOINT_EXTERNAL};

use super::delta::{Delta, Journal};
use super::endpoints::{self, Service};
use super::policy::{self, PolicySet};
use super::desired::Desired;
use super::error::{check_collision, CompileError};
use super::keys::network_key;
use crate::config::Config;
use crate::model::policy::Policy;
use crate::model::{
    Change, Cluster, ContainerPorts, Labels, Namespace, ObjectKey, PodKey, TenantName,
};
use crate::node::cgroups::PodCgroups;

/// What the compiler keeps per pod.
#[derive(Clone, Debug, PartialEq)]
struct PodState {
    identity: u64,
    endpoint: Endpoint,
    /// Addresses it claims (none for hostNetwork pods).
    addresses: Vec<IpAddr>,
}

/// A policy set and how many pods use it.
struct SetState {
    set: PolicySet,
    members: usize,
    /// A member's container ports: ingress named ports resolve on them (the set id includes
    /// the named ports, so every member has the same).
    ports: ContainerPorts,
}

/// What the changes taken since the last settle may have made stale.
#[derive(Default)]
struct Dirty {
    pods: BTreeSet<PodKey>,
    addresses: BTreeSet<[u8; 16]>,
    /// Local sets whose rules must be evaluated again.
    sets: BTreeSet<u64>,
    /// Every local set (too many changes to look at one by one, or ipBlock ranges changed).
    all_sets: bool,
    /// cgroups must be resolved to pods again.
    local: bool,
    /// The ClusterNetworkPolicies must be compiled again (`cluster.rs` says when).
    cluster_policies: bool,
    /// Number of changes taken.
    changes: usize,
}

/// A batch of more changes than this is a list (the first, or a re-list after 410 Gone).
pub const LIST_BATCH: usize = 1_000;

pub struct Incremental {
    config: Config,
    services: Vec<Service>,
    /// The config's networks, classed (cluster CIDRs pending, tenant networks their tenant).
    classes: BTreeMap<NetworkKey, Endpoint>,
    cluster: Cluster,
    cgroups: PodCgroups,
    /// By key, so a namespace's policies are one range (`in_namespace`), as its pods are in
    /// the model's: a set per namespace kept a B-tree leaf each, 7 MB at 10k namespaces.
    policies: BTreeMap<ObjectKey, Arc<Policy>>,
    /// Labels (plus `kubernetes.io/metadata.name`) of each namespace that has pods.
    namespace_labels: BTreeMap<Arc<str>, Labels>,
    tenants: BTreeMap<String, TenantName>,
    /// Namespaces every tenant may resolve (`compiler::dns::shared_namespaces`).
    dns_shared: BTreeSet<String>,
    /// Tenant id → name and how many namespaces (and tenant networks) have it.
    tenant_refs: BTreeMap<u64, (TenantName, usize)>,
    pods: BTreeMap<PodKey, PodState>,
    /// (pod tag, pod): pods by uid (the tag is a hash of it), and the index's tag → pod.
    by_tag: BTreeSet<(u64, PodKey)>,
    /// Address (key form) → the address and the pods claiming it.
    /// Claimants sorted; nearly always one, so a Vec rather than a set per address.
    claims: BTreeMap<[u8; 16], (IpAddr, Vec<PodKey>)>,
    local_pods: BTreeMap<u64, PodKey>,
    /// Local address → the cgroups of local pods that have it.
    local_claims: BTreeMap<[u8; 16], BTreeSet<u64>>,
    /// ClusterIP → the Services claiming it and their namespaces (`DNS_SERVICES`: the first).
    service_claims: BTreeMap<[u8; 16], BTreeMap<ObjectKey, moat_common::dns::NamespaceKey>>,
    sets: BTreeMap<u64, SetState>,
    /// Entries of the sets this node's pods use.
    set_rules: BTreeMap<u64, rules::SetRules>,
    /// ipBlock ranges (and the config's networks) → identity and how many policies name them.
    blocks: BTreeMap<NetworkKey, (u64, usize)>,
    groups: BTreeMap<u32, usize>,
    /// Pod identity → how many pods have it: ClusterNetworkPolicy peers resolve to identities.
    identities: BTreeMap<u64, usize>,
    /// The local pods the ClusterNetworkPolicies were last compiled for.
    cluster_subjects: BTreeMap<u64, PodKey>,
    /// The ranges each ClusterNetworkPolicy counts in `blocks` (its networks, its Nodes'
    /// addresses): what a change counts out.
    cluster_ranges: BTreeMap<String, Vec<NetworkKey>>,
    desired: Desired,
    dirty: Dirty,
    journal: Journal,
    /// A change did not compile: rebuild from the model on the next one.
    stale: bool,
}

impl Incremental {
    /// Compiles `cluster` for this node from nothing.
    pub fn new(
        config: &Config,
        cluster: Cluster,
        cgroups: PodCgroups,
    ) -> Result<Self, CompileError> {
        let mut compiler = Self::empty(config)?;
        compiler.apply(cluster.changes_from_empty(), Some(cgroups))?;
        Ok(compiler)
    }

    fn empty(config: &Config) -> Result<Self, CompileError> {
        let mut desired = Desired::for_config(config);
        let mut classes = BTreeMap::new();
        for cidr in &config.cluster_cidrs {
            classes.insert(network_key(cidr), Endpoint::PENDING);
        }
        let mut tenant_refs: BTreeMap<u64, (TenantName, usize)> = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for network in &config.tenant_networks {
            let tenant = TenantName::Label(network.tenant.as_str().into());
            let id = check_collision(&mut seen, &tenant)?;
            classes.insert(
                network_key(&network.cidr),
                Endpoint {
                    tenant: id.0,
                    ..Endpoint::EMPTY
                },
            );
            tenant_refs.entry(id.0).or_insert((tenant.clone(), 0)).1 += 1;
            desired.index.tenants.insert(id.0, tenant);
        }
        for pair in &config.allowed_tenant_pairs {
            let src = TenantName::Label(pair.from.as_str().into()).id().0;
            let dst = TenantName::Label(pair.to.as_str().into()).id().0;
            desired.tenant_pairs.insert(TenantPairKey { src, dst });
        }
        let mut compiler = Self {
            config: config.clone(),
            services: endpoints::services(config),
            classes,
            cluster: Cluster::default(),
            cgroups: PodCgroups::new(),
            policies: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            tenants: BTreeMap::new(),
            dns_shared: crate::compiler::dns::shared_namespaces(config),
            tenant_refs,
            pods: BTreeMap::new(),
            by_tag: BTreeSet::new(),
            claims: BTreeMap::new(),
            local_pods: BTreeMap::new(),
            local_claims: BTreeMap::new(),
            service_claims: BTreeMap::new(),
            sets: BTreeMap::new(),
            set_rules: BTreeMap::new(),
            blocks: BTreeMap::new(),
            groups: BTreeMap::new(),
            identities: BTreeMap::new(),
            cluster_subjects: BTreeMap::new(),
            cluster_ranges: BTreeMap::new(),
            desired,
            dirty: Dirty::default(),
            journal: Journal::default(),
            stale: false,
        };
        let networks: Vec<NetworkKey> = compiler.classes.keys().copied().collect();
        for range in networks {
            compiler.count_block(range, 1);
        }
        Ok(compiler)
    }

    /// What the maps must hold (and the index naming it), as of the last successful apply.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The model, with every change taken (also those that did not compile).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn cgroups(&self) -> &PodCgroups {
        &self.cgroups
    }

    /// Takes `changes` (and this node's pod cgroups, if they were scanned again) and returns
    /// the map entries that changed. On error the last good state stays and the maps need no
    /// writes; the compiler rebuilds itself from the model on the next call.
    pub fn apply(
        &mut self,
        changes: Vec<Change>,
        cgroups: Option<PodCgroups>,
    ) -> Result<Delta, CompileError> {
        if self.stale {
            return self.rebuild(changes, cgroups);
        }
        self.dirty.changes += changes.len();
        let taken = self.take_all(changes, cgroups).and_then(|()| self.settle());
        let journal = std::mem::take(&mut self.journal);
        let listed = self.dirty.changes > LIST_BATCH;
        self.dirty = Dirty::default();
        match taken {
            Ok(()) => {
                let delta = journal.into_delta(&self.desired);
                if listed {
                    self.pack();
                }
                Ok(delta)
            }
            Err(error) => {
                journal.rollback(&mut self.desired);
                self.stale = true;
                Err(error)
            }
        }
    }

    fn take_all(
        &mut self,
        changes: Vec<Change>,
        cgroups: Option<PodCgroups>,
    ) -> Result<(), CompileError> {
        // Past this many changes, evaluating every local set once is cheaper than checking
        // each change against each set (a re-list, the first build).
        if self.dirty.changes > LIST_BATCH {
            self.dirty.all_sets = true;
        }
        let mut failed = None;
        for change in changes {
            // Every change reaches the model, also after one failed: the rebuild needs it.
            if let Err(error) = self.take(change) {
                failed.get_or_insert(error);
            }
        }
        if let Some(cgroups) = cgroups.filter(|cgroups| *cgroups != self.cgroups) {
            self.cgroups = cgroups;
            self.dirty.local = true;
        }
        failed.map_or(Ok(()), Err)
    }

    /// A fresh compiler over the model plus `changes`; the delta from what the maps hold.
    fn rebuild(
        &mut self,
        changes: Vec<Change>,
        cgroups: Option<PodCgroups>,
    ) -> Result<Delta, CompileError> {
        let mut cluster = std::mem::take(&mut self.cluster);
        for change in changes {
            cluster.apply(change);
        }
        let cgroups = cgroups.unwrap_or_else(|| std::mem::take(&mut self.cgroups));
        match Self::new(&self.config, cluster.clone(), cgroups.clone()) {
            Ok(fresh) => {
                let delta = Delta::between(&self.desired, &fresh.desired);
                *self = fresh;
                Ok(delta)
            }
            Err(error) => {
                self.cluster = cluster;
                self.cgroups = cgroups;
                Err(error)
            }
        }
    }

    fn take(&mut self, change: Change) -> Result<(), CompileError> {
        match change {
            Change::Namespace(name, value) => {
                // Its labels may change whom a subject or peer selects.
                self.dirty.cluster_policies = true;
                self.take_namespace(name, value)
            }
            Change::Pod(key, value) => self.take_pod(key, value),
            Change::Policy(key, value) => {
                if self.cluster.apply(Change::Policy(key.clone(), value)).is_none() {
                    return Ok(());
                }
                self.take_policy(key)
            }
            Change::Service(key, value) => {
                if let Some(Change::Service(_, old)) = self.cluster.apply(Change::Service(key.clone(), value)) {
                    let new = self.cluster.services.get(&key).cloned();
                    self.service_changed(&key, old.as_ref(), new.as_ref());
                }
                Ok(())
            }
            Change::ClusterPolicy(name, value) => {
                self.take_cluster_policy(name, value);
                Ok(())
            }
            Change::Node(name, value) => {
                self.take_node(name, value);
                Ok(())
            }
            Change::NodeLabels(labels) => {
                // The node profile only changes which local pods are foreign: settle looks.
                self.cluster.apply(Change::NodeLabels(labels));
                Ok(())
            }
        }
    }

    fn take_namespace(
        &mut self,
        name: String,
        value: Option<Namespace>,
    ) -> Result<(), CompileError> {
        let Some(Change::Namespace(_, old)) =
            self.cluster.apply(Change::Namespace(name.clone(), value))
        else {
            return Ok(());
        };
        if self.namespace_labels.contains_key(name.as_str()) {
            let old_labels =
                policy::targets::namespace_labels(old.as_ref().map(|ns| &ns.labels), &name);
            let new_labels = policy::targets::namespace_labels(
                self.cluster.namespaces.get(&name).map(|ns| &ns.labels),
                &name,
            );
            if old_labels != new_labels {
                self.namespace_relabelled(&name, &old_labels, &new_labels);
            }
            if let Some(labels) = self.namespace_labels.get_mut(name.as_str()) {
                *labels = new_labels;
            }
        }
        self.refresh_tenant(&name)
    }

    fn take_pod(
        &mut self,
        key: PodKey,
        value: Option<crate::model::Pod>,
    ) -> Result<(), CompileError> {
        let Some(Change::Pod(_, old)) = self.cluster.apply(Change::Pod(key.clone(), value)) else {
            return Ok(());
        };
        let new = self.cluster.pods.get(&key).cloned();
        self.pod_changed(old.as_ref(), new.as_ref());
        if let Some(pod) = &old {
            let tag = pod_tag(pod);
            self.by_tag.remove(&(tag, key.clone()));
            self.refresh_tag(tag);
        }
        if let Some(pod) = &new {
            let tag = pod_tag(pod);
            self.by_tag.insert((tag, key.clone()));
            self.refresh_tag(tag);
        }
        let namespace = key.namespace.clone();
        // `namespace_labels` holds the namespaces that have pods.
        if new.is_some() && !self.namespace_labels.contains_key(&namespace) {
            let labels = policy::targets::namespace_labels(
                self.cluster.namespaces.get(&*namespace).map(|ns| &ns.labels),
                &namespace,
            );
            self.namespace_labels.insert(namespace.clone(), labels);
        } else if new.is_none() && in_namespace(&self.cluster.pods, &namespace).next().is_none() {
            self.namespace_labels.remove(&namespace);
        }
        self.dirty.pods.insert(key);
        self.dirty.local = true;
        self.refresh_tenant(&namespace)
    }

    /// Moves the claims of a Service from its old addresses to its new ones; each address
    /// touched goes to its first claimant in key order, as in the full compile.
    fn service_changed(&mut self, key: &ObjectKey, old: Option<&crate::model::Service>, new: Option<&crate::model::Service>) {
        let mut touched = BTreeSet::new();
        for (address, _) in old.into_iter().flat_map(crate::compiler::dns::service_claims) {
            if let Some(claims) = self.service_claims.get_mut(&address) {
                claims.remove(key);
                if claims.is_empty() {
                    self.service_claims.remove(&address);
                }
            }
            touched.insert(address);
        }
        for (address, namespace) in new.into_iter().flat_map(crate::compiler::dns::service_claims) {
            self.service_claims.entry(address).or_default().insert(key.clone(), namespace);
            touched.insert(address);
        }
        for address in touched {
            let first = self.service_claims.get(&address).and_then(|claims| claims.values().next().copied());
            super::delta::put(&mut self.desired.dns_services, &mut self.journal.dns_services, address, first);
        }
    }

    fn take_policy(&mut self, key: ObjectKey) -> Result<(), CompileError> {
        let normalized = self.cluster.network_policies.get(&key).cloned();
        let old = self.policies.remove(&key);
        // Sets of this node that hold the policy; sets it joins appear through their pods.
        for (set, _) in self.set_rules.iter() {
            if self
                .sets
                .get(set)
                .is_some_and(|state| state.set.policies.contains(&key))
            {
                self.dirty.sets.insert(*set);
            }
        }
        let old_ranges = old.as_deref().map(policy::block_ranges).unwrap_or_default();
        let new_ranges = normalized
            .as_deref()
            .map(policy::block_ranges)
            .unwrap_or_default();
        for range in dedup(old_ranges) {
            self.count_block(range, -1);
        }
        for range in dedup(new_ranges) {
            self.count_block(range, 1);
        }
        if let Some(policy) = normalized {
            self.policies.insert(key.clone(), policy);
        }
        // Which of its namespace's pods it selects may have changed.
        self.dirty.pods.extend(in_namespace(&self.cluster.pods, &key.namespace).cloned());
        Ok(())
    }

    /// Counts an ipBlock range in or out; a range appearing or going changes the partition
    /// of the address space, so every local set with an ipBlock is evaluated again.
    fn count_block(&mut self, range: NetworkKey, by: isize) {
        let entry = self
            .blocks
            .entry(range)
            .or_insert((policy::cidr_identity(&range), 0));
        entry.1 = entry.1.saturating_add_signed(by);
        let (identity, count) = *entry;
        let exists = self.desired.networks.contains_key(&range);
        if count == 0 {
            self.blocks.remove(&range);
            super::delta::put(
                &mut self.desired.networks,
                &mut self.journal.networks,
                range,
                None,
            );
        } else if !exists {
            // A range takes its class from the most specific config network holding it;
            // ranges only policies name are outside the cluster.
            let class = self
                .classes
                .iter()
                .filter(|(outer, _)| policy::contains(outer, &range))
                .max_by_key(|(outer, _)| outer.prefix_len)
                .map(|(_, endpoint)| *endpoint)
                .unwrap_or(Endpoint {
                    flags: ENDPOINT_EXTERNAL,
                    ..Endpoint::EMPTY
                });
            super::delta::put(
                &mut self.desired.networks,
                &mut self.journal.networks,
                range,
                Some(Endpoint { identity, ..class }),
            );
        } else {
            return;
        }
        self.dirty.all_sets = true;
    }

    /// Recomputes the tenant of `namespace` (known if it exists or has pods).
    fn refresh_tenant(&mut self, namespace: &str) -> Result<(), CompileError> {
        let known = self.cluster.namespaces.contains_key(namespace)
            || self.namespace_labels.contains_key(namespace);
        let new = known.then(|| {
            let implied = Namespace {
                name: namespace.into(),
                labels: Labels::new(),
            };
            self.config
                .tenants()
                .tenant_of(self.cluster.namespaces.get(namespace).unwrap_or(&implied))
        });
        let old = self.tenants.get(namespace).cloned();
        if old == new {
            return Ok(());
        }
        if let Some(new) = &new {
            let id = new.id().0;
            if let Some((existing, _)) = self
                .tenant_refs
                .get(&id)
                .filter(|(existing, _)| existing != new)
            {
                return Err(CompileError::TenantCollision {
                    first: existing.to_string(),
                    second: new.to_string(),
                    id,
                });
            }
            self.tenant_refs
                .entry(id)
                .or_insert_with(|| (new.clone(), 0))
                .1 += 1;
            self.desired.index.tenants.insert(id, new.clone());
            self.desired.index.namespace_tenants.insert(crate::model::labels::intern(namespace), new.clone());
            self.tenants.insert(namespace.into(), new.clone());
        } else {
            self.desired.index.namespace_tenants.remove(namespace);
            self.tenants.remove(namespace);
        }
        if let Some(key) = moat_common::dns::NamespaceKey::of(namespace) {
            let entry = new
                .as_ref()
                .and_then(|tenant| crate::compiler::dns::entry(&self.dns_shared, namespace, tenant))
                .map(|(_, value)| value);
            super::delta::put(&mut self.desired.dns_namespaces, &mut self.journal.dns_namespaces, key, entry);
        }
        if let Some(old) = old {
            let id = old.id().0;
            if let Some(entry) = self.tenant_refs.get_mut(&id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.tenant_refs.remove(&id);
                    self.desired.index.tenants.remove(&id);
                }
            }
        }
        self.dirty.pods.extend(in_namespace(&self.cluster.pods, namespace).cloned());
        Ok(())
    }
}

/// The keys of `map` in `namespace`: keys sort by namespace first, so they are one range.
fn in_namespace<'m, V>(map: &'m BTreeMap<ObjectKey, V>, namespace: &str) -> impl Iterator<Item = &'m ObjectKey> + 'm {
    let first = ObjectKey::new(namespace, "");
    let namespace = first.namespace.clone();
    map.range(first..).map(|(key, _)| key).take_while(move |key| key.namespace == namespace)
}

fn dedup(mut ranges: Vec<NetworkKey>) -> Vec<NetworkKey> {
    ranges.sort();
    ranges.dedup();
    ranges
}

fn pod_tag(pod: &crate::model::Pod) -> u64 {
    crate::model::pod_tag::pod_tag(pod.uid.as_deref(), &pod.key.namespace, &pod.key.name)
}

impl Incremental {
    fn with_tag(&self, tag: u64) -> impl Iterator<Item = &PodKey> {
        self.by_tag.range((tag, PodKey::new("", ""))..).take_while(move |(t, _)| *t == tag).map(|(_, key)| key)
    }

    /// The index's entry for `tag`: the last pod in key order with it.
    fn refresh_tag(&mut self, tag: u64) {
        match self.with_tag(tag).last().cloned() {
            Some(key) => self.desired.index.pods_by_tag.insert(tag, key),
            None => self.desired.index.pods_by_tag.remove(&tag),
        };
    }

    /// The pod with `uid`; of two claiming it, the last in key order (as the full compile's
    /// index keeps).
    fn pod_by_uid(&self, uid: &str) -> Option<&PodKey> {
        let tag = crate::model::pod_tag::pod_tag(Some(uid), "", "");
        self.with_tag(tag).filter(|key| self.cluster.pods.get(*key).and_then(|pod| pod.uid.as_deref()) == Some(uid)).last()
    }
}
