//! Turns the model into the exact entries the kernel maps must hold (`Desired`), plus the
//! index that maps ids back to names for events and explain.

pub mod delta;
pub mod desired;
pub mod diff;
pub mod dns;
mod endpoints;
pub mod error;
pub mod foreign;
pub mod incremental;
pub mod keys;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet};

use moat_common::maps::{
    Endpoint, NetworkKey, PodAddress, TenantPairKey, ENDPOINT_EXTERNAL, ENDPOINT_FOREIGN, ENDPOINT_HOST_NETWORK, NOT_ISOLATED,
    SETTING_CLUSTER_POLICIES,
};

use crate::config::{Cidr, Config};
use crate::model::{Cluster, PodKey, TenantName};
use crate::node::cgroups::PodCgroups;
use error::check_capacity;

pub use delta::Delta;
pub use desired::{Desired, Index};
pub use error::CompileError;
pub use incremental::Incremental;
pub use keys::{mapped, network_key};

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
    desired.index.namespace_tenants =
        tenants.of_namespace.iter().map(|(namespace, tenant)| (crate::model::labels::intern(namespace), tenant.clone())).collect();
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
            flags: endpoint_flags(desired.index.foreign.blocks(key), pod.host_network),
        };
        pod_endpoints.insert(key, endpoint);
        let tag = crate::model::pod_tag::pod_tag(pod.uid.as_deref(), &key.namespace, &key.name);
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
            desired.pod_addresses.insert(PodAddress { cgroup, addr: mapped(*ip) });
        }
    }
    let mut classified: BTreeMap<NetworkKey, Endpoint> = BTreeMap::new();
    for cidr in &config.cluster_cidrs {
        classified.insert(network_key(cidr), Endpoint::PENDING);
    }
    for network in &config.tenant_networks {
        let tenant = TenantName::Label(network.tenant.as_str().into());
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
        let src = TenantName::Label(pair.from.as_str().into());
        let dst = TenantName::Label(pair.to.as_str().into());
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
            desired.policy_rules.insert(key, refs.into_iter().collect());
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

/// A pod endpoint's `ENDPOINT_*` flags. Foreign: on the remote entry too, so this node's other
/// pods are refused at once as well. hostNetwork: the datapath never treats its loopback as
/// the pod's own (it is the node's).
pub(crate) fn endpoint_flags(foreign: bool, host_network: bool) -> u32 {
    (if foreign { ENDPOINT_FOREIGN } else { 0 }) | (if host_network { ENDPOINT_HOST_NETWORK } else { 0 })
}

#[cfg(test)]
mod tests;

