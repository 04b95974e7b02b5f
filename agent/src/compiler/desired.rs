//! The compiler's output: what every map must hold, and how to name what is in them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use moat_common::maps::{
    Endpoint, NetworkKey, PodAddress, PolicyMatch, Settings, SharedPortKey, TenantPairKey, TierMatch, TierSets,
    POLICY_FULL_BITS, POLICY_SET_IDENTITY_BITS,
};
use moat_common::dns::{DnsNamespace, DnsZone, NamespaceKey};
use moat_common::verdict::{self, ClusterRules, Exceptions, LocalEnd, Peer, PolicyRules, Reason};

use super::policy::cluster::TierSet;
use super::policy::prefixes::{mask, PROTOCOL_BITS};
use super::policy::{covering_rules, PolicySet, RuleKey, RuleRef, RuleRefs};

use crate::model::{PodKey, TenantName};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// cgroup id → endpoint, for pods on this node.
    pub local: BTreeMap<u64, Endpoint>,
    /// Address of a pod on this node → its lowest cgroup id, for the tc program's events.
    pub local_addresses: BTreeMap<[u8; 16], u64>,
    /// Every cgroup of a pod on this node with each of the pod's addresses: a connect to one
    /// of them from that cgroup is the pod's to itself (`on_sock_addr`).
    pub pod_addresses: BTreeSet<PodAddress>,
    /// Pod address → endpoint, for every pod in the cluster.
    pub remote: BTreeMap<[u8; 16], Endpoint>,
    pub networks: BTreeMap<NetworkKey, Endpoint>,
    pub shared_ports: BTreeSet<SharedPortKey>,
    pub tenant_pairs: BTreeSet<TenantPairKey>,
    /// NetworkPolicy entries, with the rules each came from.
    pub policy_rules: BTreeMap<RuleKey, RuleRefs>,
    /// cgroup → ClusterNetworkPolicy tier sets, for pods on this node that some policy selects.
    pub cluster_subjects: BTreeMap<u64, TierSets>,
    /// ClusterNetworkPolicy entries of those tier sets (`compiler::policy::cluster`).
    pub cluster_rules: BTreeMap<RuleKey, TierMatch>,
    /// `UNKNOWN_ALLOW` or `UNKNOWN_DENY`.
    pub unknown: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Namespace name → tenant, for DNS isolation (`DNS_NAMESPACES`).
    pub dns_namespaces: BTreeMap<NamespaceKey, DnsNamespace>,
    /// Service ClusterIP → its namespace, for reverse names (`DNS_SERVICES`).
    pub dns_services: BTreeMap<[u8; 16], NamespaceKey>,
    /// Cluster zones by slot (`DNS_ZONES`), from the config.
    pub dns_zones: BTreeMap<u32, DnsZone>,
    /// `Settings::dns`.
    pub dns: u32,
    pub index: Index,
}

/// Names for the ids in the maps, for events and explain. Not written to the kernel. The
/// maps that grow with the cluster are persistent (`imbl`): the event pipeline gets a copy
/// after every apply, which then costs O(1) instead of a copy of every pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    pub tenants: OrdMap<u64, TenantName>,
    pub pods_by_ip: OrdMap<IpAddr, PodKey>,
    pub pods_by_cgroup: OrdMap<u64, PodKey>,
    /// Tenant of each namespace that exists or has pods: a pod's is its namespace's (one
    /// entry per namespace, not one per pod).
    pub namespace_tenants: OrdMap<Arc<str>, TenantName>,
    pub shared_names: BTreeMap<u32, String>,
    /// Addresses claimed by pods of different tenants.
    pub conflicts: OrdSet<IpAddr>,
    pub policy_sets: OrdMap<u64, PolicySet>,
    /// ClusterNetworkPolicy tier sets: the rules, by position, that events and explain name.
    pub cluster_sets: OrdMap<u64, TierSet>,
    /// Every pod's tier sets (explain takes a pod's from here; the kernel's are by cgroup).
    pub cluster_pod_sets: OrdMap<PodKey, TierSets>,
    /// Pod tag (the guard's id of a pod: 64 bits of SHA-256 of its uid) → pod; of two pods
    /// with one tag, the last in key order.
    pub pods_by_tag: OrdMap<u64, PodKey>,
    /// Pods of another tenant on a node reserved for one (`node.foreign-tenant`).
    pub foreign: super::foreign::Foreign,
}

impl Index {
    /// The tenant `pod` is named with: its namespace's.
    pub fn tenant_of(&self, pod: &PodKey) -> Option<&TenantName> {
        self.namespace_tenants.get(&*pod.namespace)
    }
}

impl Exceptions for Desired {
    fn shared_port(&self, key: &SharedPortKey) -> bool {
        self.shared_ports.contains(key)
    }

    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        self.tenant_pairs.contains(key)
    }
}

/// The longest entry covering the key, as `CNP_RULES` answers.
impl ClusterRules for Desired {
    fn first_rules(&self, key: &PolicyMatch) -> TierMatch {
        let lengths = (PROTOCOL_BITS..=POLICY_FULL_BITS).rev().chain([POLICY_SET_IDENTITY_BITS]);
        lengths
            .filter_map(|len| self.cluster_rules.get(&(len, mask(key, len))))
            .copied()
            .next()
            .unwrap_or(TierMatch::NONE)
    }
}

impl Desired {
    /// Nothing in the maps yet, with the settings `config` gives.
    pub fn for_config(config: &crate::config::Config) -> Self {
        use moat_common::maps::{SETTING_DEFAULT_DENY_IN_TENANT, SETTING_REPORT_ALLOWED, UNKNOWN_ALLOW, UNKNOWN_DENY};
        Self {
            unknown: match config.unknown_endpoints {
                crate::config::Action::Allow => UNKNOWN_ALLOW,
                crate::config::Action::Deny => UNKNOWN_DENY,
            },
            flags: if config.default_deny_in_tenant { SETTING_DEFAULT_DENY_IN_TENANT } else { 0 }
                | if config.events.report_allowed_flows { SETTING_REPORT_ALLOWED } else { 0 },
            dns_zones: super::dns::zones(config),
            dns: super::dns::mode(config),
            ..Self::default()
        }
    }

    /// The settings an agent writes once this state is in the maps.
    pub fn settings(&self, generation: u64) -> Settings {
        Settings {
            generation,
            unknown: self.unknown,
            ready: 1,
            flags: self.flags,
            dns: self.dns,
        }
    }

    /// Remote lookup exactly as the datapath does it: exact address and longest prefix.
    pub fn remote_peer(&self, addr: &[u8; 16]) -> Peer {
        let range = self
            .networks
            .iter()
            .filter(|(key, _)| prefix_matches(key, addr))
            .max_by_key(|(key, _)| key.prefix_len)
            .map(|(_, endpoint)| endpoint);
        Peer::remote_of(self.remote.get(addr), range)
    }

    /// The tenant-floor verdict for a new flow from `src` to `dst`, as the kernel decides it.
    pub fn decide(&self, src: Peer, dst: Peer, protocol: u8, dst_port: u16) -> Reason {
        verdict::decide(&self.settings(0), src, dst, protocol, dst_port, self)
    }

    /// The verdict the node of `local` reaches for a new flow, as its kernel decides it;
    /// `cluster_set` is the local pod's tier set for the direction (`NOT_ISOLATED` if none).
    pub fn decide_at(
        &self,
        src: Peer,
        dst: Peer,
        protocol: u8,
        dst_port: u16,
        local: LocalEnd,
        cluster_set: u64,
    ) -> Reason {
        verdict::decide_flow(&self.settings(0), src, dst, protocol, dst_port, local, cluster_set, self)
    }

    /// The rules of `set` that let `peer` through on `protocol`/`port` (for explanations).
    pub fn allowing_rules(&self, set: u64, peer: &Peer, protocol: u8, port: u16) -> Vec<&RuleRef> {
        let mut found = Vec::new();
        for identity in [
            peer.endpoint.identity,
            peer.cidr_identity,
            moat_common::maps::IDENTITY_ANY,
        ] {
            if identity != 0 {
                found.extend(covering_rules(
                    &self.policy_rules,
                    &PolicyMatch::new(set, identity, protocol, port),
                ));
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

impl PolicyRules for Desired {
    fn covers(&self, key: &PolicyMatch) -> bool {
        !covering_rules(&self.policy_rules, key).is_empty()
    }
}

fn prefix_matches(key: &NetworkKey, addr: &[u8; 16]) -> bool {
    let mut remaining = key.prefix_len.min(128);
    for (a, b) in key.addr.iter().zip(addr) {
        if remaining == 0 {
            break;
        }
        let bits = remaining.min(8);
        let mask = 0xffu8 << (8 - bits);
        if a & mask != b & mask {
            return false;
        }
        remaining -= bits;
    }
    true
}
