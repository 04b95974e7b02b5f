//! What one apply changes in each map: the full diff of two states (start-up, resync), or the
//! journal of what the incremental compiler touched (one watch event).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use moat_common::dns::{DnsNamespace, DnsZone, NamespaceKey};
use moat_common::maps::{Endpoint, NetworkKey, PodAddress, SharedPortKey, TenantPairKey, TierMatch, TierSets};

use super::desired::{Desired, Index};
use super::diff::{self, Changes};
use super::policy::RuleKey;

#[derive(Debug, PartialEq, Eq)]
pub struct Delta {
    pub local: Changes<u64, Endpoint>,
    pub local_addresses: Changes<[u8; 16], u64>,
    pub pod_addresses: Changes<PodAddress, ()>,
    pub remote: Changes<[u8; 16], Endpoint>,
    pub networks: Changes<NetworkKey, Endpoint>,
    pub shared_ports: Changes<SharedPortKey, ()>,
    pub tenant_pairs: Changes<TenantPairKey, ()>,
    pub policy_rules: Changes<RuleKey, ()>,
    pub cluster_subjects: Changes<u64, TierSets>,
    pub cluster_rules: Changes<RuleKey, TierMatch>,
    pub dns_namespaces: Changes<NamespaceKey, DnsNamespace>,
    pub dns_services: Changes<[u8; 16], NamespaceKey>,
    pub dns_zones: Changes<u32, DnsZone>,
}

impl Delta {
    /// Everything that differs between `from` and `to`.
    pub fn between(from: &Desired, to: &Desired) -> Self {
        let from_rules: BTreeSet<RuleKey> = from.policy_rules.keys().copied().collect();
        let to_rules: BTreeSet<RuleKey> = to.policy_rules.keys().copied().collect();
        Self {
            local: diff::maps(&from.local, &to.local),
            local_addresses: diff::maps(&from.local_addresses, &to.local_addresses),
            pod_addresses: diff::sets(&from.pod_addresses, &to.pod_addresses),
            remote: diff::maps(&from.remote, &to.remote),
            networks: diff::maps(&from.networks, &to.networks),
            shared_ports: diff::sets(&from.shared_ports, &to.shared_ports),
            tenant_pairs: diff::sets(&from.tenant_pairs, &to.tenant_pairs),
            policy_rules: diff::sets(&from_rules, &to_rules),
            cluster_subjects: diff::maps(&from.cluster_subjects, &to.cluster_subjects),
            cluster_rules: diff::maps(&from.cluster_rules, &to.cluster_rules),
            dns_namespaces: diff::maps(&from.dns_namespaces, &to.dns_namespaces),
            dns_services: diff::maps(&from.dns_services, &to.dns_services),
            dns_zones: diff::maps(&from.dns_zones, &to.dns_zones),
        }
    }

    pub fn len(&self) -> usize {
        self.local.len()
            + self.local_addresses.len()
            + self.pod_addresses.len()
            + self.remote.len()
            + self.networks.len()
            + self.shared_ports.len()
            + self.tenant_pairs.len()
            + self.policy_rules.len()
            + self.cluster_subjects.len()
            + self.cluster_rules.len()
            + self.dns_namespaces.len()
            + self.dns_services.len()
            + self.dns_zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value each touched key had before, recorded on first touch; turned into a [`Delta`]
/// against the new state, or used to put the old state back when a change does not compile.
#[derive(Default)]
pub struct Journal {
    pub local: BTreeMap<u64, Option<Endpoint>>,
    pub local_addresses: BTreeMap<[u8; 16], Option<u64>>,
    pub pod_addresses: BTreeMap<PodAddress, bool>,
    pub remote: BTreeMap<[u8; 16], Option<Endpoint>>,
    pub networks: BTreeMap<NetworkKey, Option<Endpoint>>,
    pub shared_ports: BTreeMap<SharedPortKey, bool>,
    pub policy_rules: BTreeMap<RuleKey, bool>,
    pub cluster_subjects: BTreeMap<u64, Option<TierSets>>,
    pub cluster_rules: BTreeMap<RuleKey, Option<TierMatch>>,
    /// `Desired::flags` before, if touched.
    pub flags: Option<u32>,
    pub dns_namespaces: BTreeMap<NamespaceKey, Option<DnsNamespace>>,
    pub dns_services: BTreeMap<[u8; 16], Option<NamespaceKey>>,
}

/// Sets `map[key]` to `value`, recording the old value in `journal` on first touch.
pub fn put<K: Ord + Copy, V: Clone>(
    map: &mut BTreeMap<K, V>,
    journal: &mut BTreeMap<K, Option<V>>,
    key: K,
    value: Option<V>,
) {
    journal.entry(key).or_insert_with(|| map.get(&key).cloned());
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// Adds or removes `key` in `set`, recording whether it was there on first touch.
pub fn mark<K: Ord + Copy>(
    set: &mut BTreeSet<K>,
    journal: &mut BTreeMap<K, bool>,
    key: K,
    present: bool,
) {
    journal.entry(key).or_insert_with(|| set.contains(&key));
    if present {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

fn changes<K: Ord + Copy, V: Clone + PartialEq>(
    journal: BTreeMap<K, Option<V>>,
    now: &BTreeMap<K, V>,
) -> Changes<K, V> {
    let mut out = Changes {
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
    };
    for (key, before) in journal {
        match (before, now.get(&key)) {
            (None, Some(value)) => out.added.push((key, value.clone())),
            (Some(before), Some(value)) if before != *value => {
                out.changed.push((key, value.clone()))
            }
            (Some(_), None) => out.removed.push(key),
            _ => {}
        }
    }
    out
}

fn presence<K: Ord + Copy>(journal: BTreeMap<K, bool>, now: impl Fn(&K) -> bool) -> Changes<K, ()> {
    let mut out = Changes {
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
    };
    for (key, before) in journal {
        match (before, now(&key)) {
            (false, true) => out.added.push((key, ())),
            (true, false) => out.removed.push(key),
            _ => {}
        }
    }
    out
}

impl Journal {
    pub fn into_delta(self, now: &Desired) -> Delta {
        Delta {
            local: changes(self.local, &now.local),
            local_addresses: changes(self.local_addresses, &now.local_addresses),
            pod_addresses: presence(self.pod_addresses, |key| now.pod_addresses.contains(key)),
            remote: changes(self.remote, &now.remote),
            networks: changes(self.networks, &now.networks),
            shared_ports: presence(self.shared_ports, |key| now.shared_ports.contains(key)),
            tenant_pairs: Changes {
                added: Vec::new(),
                changed: Vec::new(),
                removed: Vec::new(),
            },
            policy_rules: presence(self.policy_rules, |key| now.policy_rules.contains_key(key)),
            cluster_subjects: changes(self.cluster_subjects, &now.cluster_subjects),
            cluster_rules: changes(self.cluster_rules, &now.cluster_rules),
            dns_namespaces: changes(self.dns_namespaces, &now.dns_namespaces),
            dns_services: changes(self.dns_services, &now.dns_services),
            // Zones come from the config, which an incremental compiler never changes.
            dns_zones: Changes {
                added: Vec::new(),
                changed: Vec::new(),
                removed: Vec::new(),
            },
        }
    }

    /// Puts back every map entry touched since the journal was started. Policy entries come
    /// back without the rules they name (only their keys matter to the kernel).
    pub fn rollback(self, desired: &mut Desired) {
        fn restore<K: Ord, V>(map: &mut BTreeMap<K, V>, journal: BTreeMap<K, Option<V>>) {
            for (key, before) in journal {
                match before {
                    Some(value) => map.insert(key, value),
                    None => map.remove(&key),
                };
            }
        }
        restore(&mut desired.local, self.local);
        restore(&mut desired.local_addresses, self.local_addresses);
        restore(&mut desired.remote, self.remote);
        restore(&mut desired.networks, self.networks);
        restore(&mut desired.dns_namespaces, self.dns_namespaces);
        restore(&mut desired.dns_services, self.dns_services);
        restore(&mut desired.cluster_subjects, self.cluster_subjects);
        restore(&mut desired.cluster_rules, self.cluster_rules);
        if let Some(flags) = self.flags {
            desired.flags = flags;
        }
        for (key, before) in self.shared_ports {
            if before {
                desired.shared_ports.insert(key);
            } else {
                desired.shared_ports.remove(&key);
            }
        }
        for (key, before) in self.pod_addresses {
            if before {
                desired.pod_addresses.insert(key);
            } else {
                desired.pod_addresses.remove(&key);
            }
        }
        for (key, before) in self.policy_rules {
            if before {
                desired.policy_rules.entry(key).or_default();
            } else {
                desired.policy_rules.remove(&key);
            }
        }
    }
}

impl Index {
    /// This index, still naming what `old` named and this one does not (tenants, and the
    /// cgroups and addresses `delta` removes): published before the maps are written, so an event decided under either
    /// the old or the new maps finds its names. Ids are content hashes, so a name kept
    /// from `old` can only be right.
    pub fn naming_also(&self, old: &Index, delta: &Delta) -> Index {
        let mut both = self.clone();
        for (id, name) in old.tenants.iter().filter(|(id, _)| !self.tenants.contains_key(*id)) {
            both.tenants.insert(*id, name.clone());
        }
        for (id, set) in old.cluster_sets.iter().filter(|(id, _)| !self.cluster_sets.contains_key(*id)) {
            both.cluster_sets.insert(*id, set.clone());
        }
        // Only what the delta removed can be missing: O(change), not O(cluster).
        for cgroup in &delta.local.removed {
            if let Some(pod) = old.pods_by_cgroup.get(cgroup) {
                both.pods_by_cgroup.insert(*cgroup, pod.clone());
                both.keep_tenant_of(pod, old);
            }
        }
        for address in &delta.remote.removed {
            let ip = IpAddr::from(*address).to_canonical();
            if let Some(pod) = old.pods_by_ip.get(&ip) {
                both.pods_by_ip.insert(ip, pod.clone());
                both.keep_tenant_of(pod, old);
            }
        }
        both
    }

    /// `pod`'s tenant as `old` named it, if this index no longer knows its namespace.
    fn keep_tenant_of(&mut self, pod: &crate::model::PodKey, old: &Index) {
        if self.tenant_of(pod).is_none() {
            if let Some(tenant) = old.tenant_of(pod) {
                self.namespace_tenants.insert(pod.namespace.clone(), tenant.clone());
            }
        }
    }
}
