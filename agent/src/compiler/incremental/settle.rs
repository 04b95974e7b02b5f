//! Working out what the changes taken made stale, in dependency order: which pods are local,
//! which are foreign, each stale pod's endpoint, the local entries, the owners of stale
//! addresses, and the entries of the local sets.

use std::collections::{BTreeMap, BTreeSet};

use moat_common::maps::{Endpoint, PodAddress, NOT_ISOLATED};

use super::peers::{claimed, key_of};
use super::{Incremental, PodState, SetState};
use crate::compiler::delta::{mark, put};
use crate::compiler::endpoints;
use crate::compiler::foreign::{self, Foreign};
use crate::compiler::policy::{self, Direction, PolicySet};
use crate::compiler::error::{check_capacity, CompileError};
use crate::model::PodKey;
use crate::node::cgroups::PodRef;

impl Incremental {
    pub(super) fn settle(&mut self) -> Result<(), CompileError> {
        let mut stale_cgroups = BTreeSet::new();
        if self.dirty.local {
            stale_cgroups = self.resolve_local();
        }
        self.refresh_foreign();
        let pods = std::mem::take(&mut self.dirty.pods);
        for key in &pods {
            self.settle_pod(key)?;
        }
        for (cgroup, key) in &self.local_pods {
            if pods.contains(key) {
                stale_cgroups.insert(*cgroup);
                // A subject of the ClusterNetworkPolicies changed.
                self.dirty.cluster_policies = true;
            }
        }
        for cgroup in stale_cgroups {
            self.settle_local(cgroup);
        }
        for address in std::mem::take(&mut self.dirty.addresses) {
            self.settle_address(address);
        }
        self.settle_sets()?;
        self.settle_cluster_policies()?;
        check_capacity(&self.desired)
    }

    /// cgroup → pod again; returns the cgroups whose pod changed.
    fn resolve_local(&mut self) -> BTreeSet<u64> {
        let mut local = BTreeMap::new();
        for (cgroup, pod_ref) in &self.cgroups {
            let key = match pod_ref {
                PodRef::Key(key) => self.cluster.pods.contains_key(key).then_some(key),
                // Two pods claiming one uid: the last in key order, as the full compile's
                // index keeps.
                PodRef::Uid(uid) => self.pod_by_uid(uid),
            };
            if let Some(key) =
                key.filter(|key| foreign::scheduled_here(&self.config, &self.cluster.pods[*key]))
            {
                local.insert(*cgroup, key.clone());
            }
        }
        let mut stale: BTreeSet<u64> = self
            .local_pods
            .keys()
            .filter(|cgroup| !local.contains_key(cgroup))
            .copied()
            .collect();
        stale.extend(
            local
                .iter()
                .filter(|(cgroup, key)| self.local_pods.get(cgroup) != Some(key))
                .map(|(cgroup, _)| *cgroup),
        );
        self.local_pods = local;
        stale
    }

    /// Foreign pods among the local ones; those whose flag changes get a new endpoint.
    fn refresh_foreign(&mut self) {
        let found = Foreign::find(
            &self.cluster,
            &self.config,
            self.local_pods.values(),
            &self.tenants,
        );
        if found == self.desired.index.foreign {
            return;
        }
        let old = std::mem::replace(&mut self.desired.index.foreign, found);
        let new = &self.desired.index.foreign;
        let keys: BTreeSet<&PodKey> = old.pods.keys().chain(new.pods.keys()).collect();
        let flipped: Vec<PodKey> = keys
            .into_iter()
            .filter(|key| old.blocks(key) != new.blocks(key))
            .cloned()
            .collect();
        self.dirty.pods.extend(flipped);
    }

    fn settle_pod(&mut self, key: &PodKey) -> Result<(), CompileError> {
        let old = self.pods.remove(key);
        let new = match self.cluster.pods.get(key) {
            None => None,
            Some(pod) => {
                let tenant = &self.tenants[&*key.namespace];
                let mut sets = [NOT_ISOLATED, NOT_ISOLATED];
                for (slot, direction) in [Direction::Ingress, Direction::Egress]
                    .into_iter()
                    .enumerate()
                {
                    let mut selecting = Vec::new();
                    for policy_key in super::in_namespace(&self.policies, &key.namespace) {
                        if policy::selects(&self.policies[policy_key], direction, &pod.labels) {
                            selecting.push(policy_key);
                        }
                    }
                    if !selecting.is_empty() {
                        let id = policy::set_id(direction, selecting.iter().copied(), &pod.ports);
                        sets[slot] = id;
                        let state = self.sets.entry(id).or_insert_with(|| SetState {
                            set: PolicySet {
                                direction,
                                policies: selecting.iter().map(|key| (*key).clone()).collect(),
                            },
                            members: 0,
                            ports: pod.ports.clone(),
                        });
                        state.members += 1;
                        if state.members == 1 {
                            self.desired.index.policy_sets.insert(id, state.set.clone());
                        }
                    }
                }
                let shared = endpoints::group_of(&self.services, key, &pod.labels);
                let identity = policy::pod_identity(&key.namespace, &pod.labels, &pod.ports);
                let endpoint = Endpoint {
                    tenant: tenant.id().0,
                    identity,
                    ingress_policy: sets[0],
                    egress_policy: sets[1],
                    shared,
                    flags: crate::compiler::endpoint_flags(self.desired.index.foreign.blocks(key), pod.host_network),
                };
                Some(PodState {
                    identity,
                    endpoint,
                    addresses: claimed(pod),
                })
            }
        };
        if old.as_ref().map(|s| s.identity) != new.as_ref().map(|s| s.identity) {
            self.count_identity(old.as_ref().map(|s| s.identity), new.as_ref().map(|s| s.identity));
        }
        if let Some(old) = &old {
            for set in [old.endpoint.ingress_policy, old.endpoint.egress_policy]
                .into_iter()
                .filter(|set| *set != NOT_ISOLATED)
            {
                self.release_set(set);
            }
            self.count_group(old.endpoint.shared, -1);
            for ip in &old.addresses {
                let address = key_of(*ip);
                if let Some((_, claimants)) = self.claims.get_mut(&address) {
                    claimants.retain(|claimant| claimant != key);
                    if claimants.is_empty() {
                        self.claims.remove(&address);
                    }
                }
                self.dirty.addresses.insert(address);
            }
        }
        if let Some(state) = new {
            self.count_group(state.endpoint.shared, 1);
            for ip in &state.addresses {
                let address = key_of(*ip);
                let claimants = &mut self
                    .claims
                    .entry(address)
                    // One claimant nearly always: not the four a first push reserves.
                    .or_insert_with(|| (*ip, Vec::with_capacity(1)))
                    .1;
                if let Err(at) = claimants.binary_search(key) {
                    claimants.insert(at, key.clone());
                }
                self.dirty.addresses.insert(address);
            }
            self.pods.insert(key.clone(), state);
        }
        Ok(())
    }

    fn release_set(&mut self, set: u64) {
        if let Some(state) = self.sets.get_mut(&set) {
            state.members -= 1;
            if state.members == 0 {
                self.sets.remove(&set);
                self.desired.index.policy_sets.remove(&set);
            }
        }
    }

    fn count_group(&mut self, group: u32, by: isize) {
        if group == 0 {
            return;
        }
        let count = self.groups.entry(group).or_insert(0);
        *count = count.saturating_add_signed(by);
        let present = *count > 0;
        if !present {
            self.groups.remove(&group);
        }
        if present == self.desired.index.shared_names.contains_key(&group) {
            return;
        }
        for port in endpoints::group_ports(&self.services, group) {
            mark(
                &mut self.desired.shared_ports,
                &mut self.journal.shared_ports,
                port,
                present,
            );
        }
        if present {
            self.desired
                .index
                .shared_names
                .insert(group, endpoints::group_name(&self.services, group));
        } else {
            self.desired.index.shared_names.remove(&group);
        }
    }

    /// The entry of one local cgroup, and the local addresses of its pod.
    fn settle_local(&mut self, cgroup: u64) {
        let key = self.local_pods.get(&cgroup).cloned();
        let state = key.as_ref().and_then(|key| self.pods.get(key));
        put(
            &mut self.desired.local,
            &mut self.journal.local,
            cgroup,
            state.map(|state| state.endpoint),
        );
        match &key {
            Some(key) => self
                .desired
                .index
                .pods_by_cgroup
                .insert(cgroup, key.clone()),
            None => self.desired.index.pods_by_cgroup.remove(&cgroup),
        };
        let addresses: BTreeSet<[u8; 16]> = state
            .map(|state| state.addresses.iter().map(|ip| key_of(*ip)).collect())
            .unwrap_or_default();
        let mut touched = BTreeSet::new();
        self.local_claims.retain(|address, cgroups| {
            if !addresses.contains(address) && cgroups.remove(&cgroup) {
                touched.insert(*address);
            }
            !cgroups.is_empty()
        });
        for &address in &addresses {
            self.local_claims.entry(address).or_default().insert(cgroup);
            touched.insert(address);
        }
        // This cgroup with each address its pod holds now, none it dropped (connects to itself).
        for &address in &touched {
            let held = addresses.contains(&address);
            mark(&mut self.desired.pod_addresses, &mut self.journal.pod_addresses, PodAddress { cgroup, addr: address }, held);
        }
        for address in touched {
            // The lowest cgroup of a local pod with the address names it (tc events).
            let lowest = self
                .local_claims
                .get(&address)
                .and_then(|cgroups| cgroups.first().copied());
            put(
                &mut self.desired.local_addresses,
                &mut self.journal.local_addresses,
                address,
                lowest,
            );
        }
    }

    /// The remote entry of one address: its first claimant (in key order) names it; claimants
    /// of two tenants make it pending.
    fn settle_address(&mut self, address: [u8; 16]) {
        let Some((ip, claimants)) = self.claims.get(&address) else {
            put(
                &mut self.desired.remote,
                &mut self.journal.remote,
                address,
                None,
            );
            let ip = std::net::IpAddr::from(address).to_canonical();
            self.desired.index.pods_by_ip.remove(&ip);
            self.desired.index.conflicts.remove(&ip);
            return;
        };
        let mut endpoints = claimants
            .iter()
            .filter_map(|key| self.pods.get(key).map(|state| (key, state.endpoint)));
        let Some((first, endpoint)) = endpoints.next() else {
            return;
        };
        let conflict = endpoints.any(|(_, other)| other.tenant != endpoint.tenant);
        let value = if conflict {
            Endpoint::PENDING
        } else {
            endpoint
        };
        self.desired.index.pods_by_ip.insert(*ip, first.clone());
        if conflict {
            self.desired.index.conflicts.insert(*ip);
        } else {
            self.desired.index.conflicts.remove(ip);
        }
        put(
            &mut self.desired.remote,
            &mut self.journal.remote,
            address,
            Some(value),
        );
    }

    /// The sets this node's pods use: new ones evaluated, gone ones removed, stale ones
    /// evaluated again.
    fn settle_sets(&mut self) -> Result<(), CompileError> {
        let local: BTreeSet<u64> = self
            .local_pods
            .values()
            .filter_map(|key| self.pods.get(key))
            .flat_map(|state| [state.endpoint.ingress_policy, state.endpoint.egress_policy])
            .filter(|set| *set != NOT_ISOLATED)
            .collect();
        let gone: Vec<u64> = self
            .set_rules
            .keys()
            .filter(|set| !local.contains(set))
            .copied()
            .collect();
        for set in gone {
            self.replace_rules(set, None);
            self.set_rules.remove(&set);
        }
        let stale: Vec<u64> = local
            .into_iter()
            .filter(|set| {
                self.dirty.all_sets
                    || self.dirty.sets.contains(set)
                    || !self.set_rules.contains_key(set)
            })
            .collect();
        for set in stale {
            let rules = self.evaluate(set);
            self.replace_rules(set, Some(rules));
        }
        Ok(())
    }
}
