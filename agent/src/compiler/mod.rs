//! Turns the model into the exact entries the kernel maps must hold (`Desired`), plus the
//! index that maps ids back to names for events and explain.

pub mod desired;
pub mod diff;
mod endpoints;

use std::collections::BTreeMap;
use std::net::IpAddr;

use moat_common::maps::{capacity, Endpoint, NetworkKey, TenantPairKey, ENDPOINT_PENDING};

use crate::config::{Action, Config, Cidr};
use crate::model::{Cluster, PodKey, TenantId, TenantName};
use crate::node::cgroups::PodCgroups;

pub use desired::{Desired, Index};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error("tenants {first} and {second} hash to the same id {id:#x}; rename one of them")]
    TenantCollision { first: String, second: String, id: u64 },
    #[error("{map} would need {needed} entries but holds at most {capacity}")]
    Capacity { map: &'static str, needed: usize, capacity: u32 },
}

/// Compiles the cluster for this node. `cgroups` are the pod cgroups found on this node.
pub fn compile(cluster: &Cluster, config: &Config, cgroups: &PodCgroups) -> Result<Desired, CompileError> {
    let tenants = endpoints::tenants(cluster, config)?;
    let shared = endpoints::SharedGroups::new(cluster, config);
    let mut desired = Desired {
        unknown: match config.unknown_endpoints {
            Action::Allow => moat_common::maps::UNKNOWN_ALLOW,
            Action::Deny => moat_common::maps::UNKNOWN_DENY,
        },
        ..Desired::default()
    };
    let mut pod_endpoints: BTreeMap<&PodKey, Endpoint> = BTreeMap::new();
    for (key, pod) in &cluster.pods {
        let tenant = &tenants.of_namespace[&key.namespace];
        let endpoint = Endpoint { tenant: tenant.id().0, shared: shared.group_of(key), flags: 0 };
        pod_endpoints.insert(key, endpoint);
        desired.index.pod_tenants.insert(key.clone(), tenant.clone());
        if pod.host_network {
            continue;
        }
        for ip in &pod.ips {
            let addr = mapped(*ip);
            match desired.remote.get(&addr) {
                // Two live pods claim one address: it identifies neither, so deny it
                // cross-tenant rather than guess.
                Some(existing) if existing.tenant != endpoint.tenant => {
                    desired.remote.insert(addr, Endpoint { tenant: 0, shared: 0, flags: ENDPOINT_PENDING });
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
    let lookup = endpoints::PodLookup::new(cluster);
    for (cgroup, pod_ref) in cgroups {
        let Some(key) = lookup.resolve(pod_ref) else { continue };
        let local = match (&config.node_name, &cluster.pods[key].node_name) {
            (Some(node), Some(pod_node)) => node == pod_node,
            _ => true,
        };
        if local {
            desired.local.insert(*cgroup, pod_endpoints[key]);
            desired.index.pods_by_cgroup.insert(*cgroup, key.clone());
        }
    }
    for cidr in &config.cluster_cidrs {
        desired.networks.insert(network_key(cidr), Endpoint { tenant: 0, shared: 0, flags: ENDPOINT_PENDING });
    }
    for network in &config.tenant_networks {
        let tenant = TenantName::Label(network.tenant.clone());
        desired.networks.insert(network_key(&network.cidr), Endpoint { tenant: tenant.id().0, shared: 0, flags: 0 });
        desired.index.tenants.insert(tenant.id().0, tenant);
    }
    for pair in &config.allowed_tenant_pairs {
        let src = TenantName::Label(pair.from.clone());
        let dst = TenantName::Label(pair.to.clone());
        desired.tenant_pairs.insert(TenantPairKey { src: src.id().0, dst: dst.id().0 });
    }
    desired.shared_ports = shared.ports();
    desired.index.shared_names = shared.names();
    for name in tenants.of_namespace.into_values() {
        desired.index.tenants.insert(name.id().0, name);
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

fn check_capacity(desired: &Desired) -> Result<(), CompileError> {
    let checks: [(&'static str, usize, u32); 5] = [
        ("LOCAL_ENDPOINTS", desired.local.len(), capacity::LOCAL_ENDPOINTS),
        ("REMOTE_ENDPOINTS", desired.remote.len(), capacity::REMOTE_ENDPOINTS),
        ("REMOTE_NETWORKS", desired.networks.len(), capacity::REMOTE_NETWORKS),
        ("SHARED_PORTS", desired.shared_ports.len(), capacity::SHARED_PORTS),
        ("TENANT_PAIRS", desired.tenant_pairs.len(), capacity::TENANT_PAIRS),
    ];
    for (map, needed, capacity) in checks {
        if needed > capacity as usize {
            return Err(CompileError::Capacity { map, needed, capacity });
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
