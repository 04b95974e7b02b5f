//! Turns the model into the exact entries the kernel maps must hold (`Desired`), plus the
//! index that maps ids back to names for events and explain.

pub mod delta;
pub mod desired;
pub mod diff;
pub mod dns;
mod endpoints;
pub mod foreign;
pub mod incremental;
pub mod policy;

use std::collections::BTreeMap;
use std::net::IpAddr;

use std::collections::BTreeSet;

use moat_common::maps::{
    capacity, Endpoint, NetworkKey, TenantPairKey, ENDPOINT_EXTERNAL, ENDPOINT_FOREIGN,
    NOT_ISOLATED, SETTING_CLUSTER_POLICIES,
};

use crate::config::{Cidr, Config};
use crate::model::{Cluster, PodKey, TenantId, TenantName};
use crate::node::cgroups::PodCgroups;

pub use delta::Delta;
pub use desired::{Desired, Index};
pub use incremental::Incremental;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error("tenants {first} and {second} hash to the same id {id:#x}; rename one of them")]
    TenantCollision {
        first: String,
        second: String,
        id: u64,
    },
    #[error("{map} would need {needed} entries but holds at most {capacity}")]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error(transparent)]
    ClusterPolicy(#[from] policy::cluster::ClusterPolicyError),
}

/// What the compiler produces policy entries for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the policy sets of this node's pods: what the agent writes to the kernel.
    Node,
    /// Every pod's policy sets: what `moat explain` evaluates.
    Cluster,
}

/// Compiles the cluster for this node. `cgroups` are the pod cgroups found on this node.
pub fn compile(
    cluster: &Cluster,
    config: &Config,
    cgroups: &PodCgroups,
) -> Result<Desired, CompileError> {
    compile_scoped(cluster, config, cgroups, Scope::Node)
}

pub fn compile_scoped(
    cluster: &Cluster,
    config: &Config,
    cgroups: &PodCgroups,
    scope: Scope,
) -> Result<Desired, CompileError> {
    let tenants = endpoints::tenants(cluster, config)?;
    let shared = endpoints::SharedGroups::new(cluster, config);
    let cnps: Vec<&crate::model::cnp::ClusterNetworkPolicy> =
        cluster.cluster_network_policies.values().map(|policy| &**policy).collect();
    // ClusterNetworkPolicy networks and Node addresses join the address partition that
    // ipBlocks make.
    let config_networks: Vec<Cidr> = config
        .cluster_cidrs
        .iter()
        .chain(config.tenant_networks.iter().map(|n| &n.cidr))
        .copied()
        .chain(policy::cluster::networks(&cnps, &cluster.nodes))
        .collect();
    let policies = policy::compile(cluster, &config_networks);
    let cluster_policies = policy::cluster::compile(cluster, &cnps, &policies.blocks)?;
    let mut desired = Desired::for_config(config);
    // The pods running here: by their cgroups for the kernel; for explain (no cgroups), every
    // pod scheduled here.
    let lookup = endpoints::PodLookup::new(cluster);
    let mut local_pods: BTreeMap<u64, &PodKey> = BTreeMap::new();
    for (cgroup, pod_ref) in cgroups {
        if let Some(key) = lookup
            .resolve(pod_ref)
            .filter(|key| foreign::scheduled_here(config, &cluster.pods[*key]))
        {
            local_pods.insert(*cgroup, key);
        }
    }
    let on_node: BTreeSet<&PodKey> = match scope {
        Scope::Node => local_pods.values().copied().collect(),
        Scope::Cluster => cluster
            .pods
            .iter()
            .filter(|(_, pod)| foreign::scheduled_here(config, pod))
            .map(|(key, _)| key)
            .collect(),
    };
    desired.index.foreign = foreign::Foreign::find(cluster, config, on_node, &tenants.of_namespace);
    let mut pod_endpoints: BTreeMap<&PodKey, Endpoint> = BTreeMap::new();
    for (key, pod) in &cluster.pods {
        let tenant = &tenants.of_namespace[&*key.namespace];
        let (ingress_policy, egress_policy) = policies
            .pod_sets
            .get(key)
            .copied()
            .unwrap_or((NOT_ISOLATED, NOT_ISOLATED));
        let endpoint = Endpoint {
            tenant: tenant.id().0,
            identity: policies.pod_identity.get(key).copied().unwrap_or(0),
            ingress_policy,
            egress_policy,
            shared: shared.group_of(key),
            // On the remote entry too, so this node's other pods are refused at once as well.
            flags: if desired.index.foreign.blocks(key) {
                ENDPOINT_FOREIGN
            } else {
                0
            },
        };
        pod_endpoints.insert(key, endpoint);
        desired
            .index
            .pod_tenants
            .insert(key.clone(), tenant.clone());
        let tag = crate::guard::node::pod_tag(pod.uid.as_deref(), &key.namespace, &key.name);
        desired.index.pods_by_tag.insert(tag, key.clone());
        if pod.host_network {
            continue;
        }
        for ip in &pod.ips {
            let addr = mapped(*ip);
            match desired.remote.get(&addr) {
                // Two live pods claim one address: it identifies neither, so deny it
                // cross-tenant rather than guess.
                Some(existing) if existing.tenant != endpoint.tenant => {
                    desired.remote.insert(addr, Endpoint::PENDING);
                    desired.index.conflicts.insert(*ip);
                }
                Some(_) => {}
                None => {
                    desired.remote.insert(addr, endpoint);
                    desired.index.pods_by_ip.insert(*ip, key.clone());
                }
            }
        }
    }
    let mut local_sets = BTreeSet::new();
    let mut local_tier_sets = BTreeSet::new();
    for (cgroup, key) in local_pods {
        if let Some(sets) = cluster_policies.pod_sets.get(key) {
            desired.cluster_subjects.insert(cgroup, *sets);
            local_tier_sets.extend([sets.ingress, sets.egress]);
        }
        let endpoint = pod_endpoints[key];
        local_sets.extend([endpoint.ingress_policy, endpoint.egress_policy]);
        desired.local.insert(cgroup, endpoint);
        desired.index.pods_by_cgroup.insert(cgroup, key.clone());
        let pod = &cluster.pods[key];
        for ip in pod.ips.iter().filter(|_| !pod.host_network) {
            desired.local_addresses.entry(mapped(*ip)).or_insert(cgroup);
        }
    }
    let mut classified: BTreeMap<NetworkKey, Endpoint> = BTreeMap::new();
    for cidr in &config.cluster_cidrs {
        classified.insert(network_key(cidr), Endpoint::PENDING);
    }
    for network in &config.tenant_networks {
        let tenant = TenantName::Label(network.tenant.clone());
        classified.insert(
            network_key(&network.cidr),
            Endpoint {
                tenant: tenant.id().0,
                ..Endpoint::EMPTY
            },
        );
        desired.index.tenants.insert(tenant.id().0, tenant);
    }
    for (range, identity) in &policies.blocks {
        // A range takes its class from the most specific config network holding it; ranges
        // only policies name are outside the cluster.
        let class = classified
            .iter()
            .filter(|(outer, _)| policy::contains(outer, range))
            .max_by_key(|(outer, _)| outer.prefix_len)
            .map(|(_, endpoint)| *endpoint)
            .unwrap_or(Endpoint {
                flags: ENDPOINT_EXTERNAL,
                ..Endpoint::EMPTY
            });
        desired.networks.insert(
            *range,
            Endpoint {
                identity: *identity,
                ..class
            },
        );
    }
    for pair in &config.allowed_tenant_pairs {
        let src = TenantName::Label(pair.from.clone());
        let dst = TenantName::Label(pair.to.clone());
        desired.tenant_pairs.insert(TenantPairKey {
            src: src.id().0,
            dst: dst.id().0,
        });
    }
    desired.shared_ports = shared.ports();
    desired.index.shared_names = shared.names();
    desired.dns_namespaces = dns::namespaces(config, &tenants.of_namespace);
    desired.dns_services = dns::services(cluster.services.values());
    for name in tenants.of_namespace.into_values() {
        desired.index.tenants.insert(name.id().0, name);
    }
    for (key, refs) in policies.rules {
        if scope == Scope::Cluster || local_sets.contains(&key.1.set) {
            desired.policy_rules.insert(key, refs);
        }
    }
    desired.index.policy_sets = policies.sets.into_iter().collect();
    let wanted = |set: &u64| scope == Scope::Cluster || local_tier_sets.contains(set);
    desired.cluster_rules = cluster_policies.rules.into_iter().filter(|((_, key), _)| wanted(&key.set)).collect();
    desired.index.cluster_sets = cluster_policies.sets.into_iter().filter(|(set, _)| wanted(set)).collect();
    if scope == Scope::Cluster {
        desired.index.cluster_pod_sets = cluster_policies.pod_sets.into_iter().collect();
    }
    // The datapath reads CNP_SUBJECTS only while some pod here has a tier set.
    if !desired.cluster_subjects.is_empty() || !desired.index.cluster_pod_sets.is_empty() {
        desired.flags |= SETTING_CLUSTER_POLICIES;
    }
    check_capacity(&desired)?;
    Ok(desired)
}

/// The 16-byte key form of an address (IPv4 mapped into IPv6).
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => moat_common::maps::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn network_key(cidr: &Cidr) -> NetworkKey {
    let prefix_len = match cidr.addr {
        IpAddr::V4(_) => u32::from(cidr.prefix_len) + 96,
        IpAddr::V6(_) => u32::from(cidr.prefix_len),
    };
    // Host bits are cleared so equal prefixes written differently are one key.
    let mut addr = mapped(cidr.addr);
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = prefix_len.saturating_sub(i as u32 * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    NetworkKey { prefix_len, addr }
}

pub(crate) fn check_capacity(desired: &Desired) -> Result<(), CompileError> {
    let checks: [(&'static str, usize, u32); 11] = [
        ("CNP_SUBJECTS", desired.cluster_subjects.len(), capacity::CNP_SUBJECTS),
        ("CNP_RULES", desired.cluster_rules.len(), capacity::CNP_RULES),
        (
            "DNS_NAMESPACES",
            desired.dns_namespaces.len(),
            moat_common::dns::DNS_NAMESPACES_CAPACITY,
        ),
        ("DNS_SERVICES", desired.dns_services.len(), moat_common::dns::DNS_SERVICES_CAPACITY),
        (
            "POLICY_RULES",
            desired.policy_rules.len(),
            capacity::POLICY_RULES,
        ),
        (
            "LOCAL_ENDPOINTS",
            desired.local.len(),
            capacity::LOCAL_ENDPOINTS,
        ),
        (
            "LOCAL_ADDRESSES",
            desired.local_addresses.len(),
            capacity::LOCAL_ADDRESSES,
        ),
        (
            "REMOTE_ENDPOINTS",
            desired.remote.len(),
            capacity::REMOTE_ENDPOINTS,
        ),
        (
            "REMOTE_NETWORKS",
            desired.networks.len(),
            capacity::REMOTE_NETWORKS,
        ),
        (
            "SHARED_PORTS",
            desired.shared_ports.len(),
            capacity::SHARED_PORTS,
        ),
        (
            "TENANT_PAIRS",
            desired.tenant_pairs.len(),
            capacity::TENANT_PAIRS,
        ),
    ];
    for (map, needed, capacity) in checks {
        if needed > capacity as usize {
            return Err(CompileError::Capacity {
                map,
                needed,
                capacity,
            });
        }
    }
    Ok(())
}

/// Ids seen by the compiler, kept to refuse collisions.
pub(crate) fn check_collision(
    seen: &mut BTreeMap<u64, TenantName>,
    name: &TenantName,
) -> Result<TenantId, CompileError> {
    let id = name.id();
    match seen.get(&id.0) {
        Some(existing) if existing != name => Err(CompileError::TenantCollision {
            first: existing.to_string(),
            second: name.to_string(),
            id: id.0,
        }),
        _ => {
            seen.insert(id.0, name.clone());
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests;
