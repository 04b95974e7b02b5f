//! What makes a compile fail: colliding tenant ids, a map over its capacity, a
//! ClusterNetworkPolicy the kernel cannot hold.

use std::collections::BTreeMap;

use moat_common::maps::capacity;

use super::desired::Desired;
use super::policy::cluster::ClusterPolicyError;
use crate::model::{TenantId, TenantName};

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
    ClusterPolicy(#[from] ClusterPolicyError),
}

pub(crate) fn check_capacity(desired: &Desired) -> Result<(), CompileError> {
    let checks: [(&'static str, usize, u32); 12] = [
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
            "POD_ADDRESSES",
            desired.pod_addresses.len(),
            capacity::POD_ADDRESSES,
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
