//! Node profiles: on a node whose `guard.nodeTenantLabel` names a tenant, a local pod of any
//! other tenant is foreign (detection `node.foreign-tenant`). In block mode its endpoint
//! entries carry `ENDPOINT_FOREIGN`, which the datapath's floor checks before anything else.
//!
//! Not foreign, whatever the label says: pods without a tenant (namespaces the tenant source
//! gives none, typically system namespaces whose DaemonSets run on every node) and pods in
//! `guard.exemptNamespaces`.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::config::GuardMode;
use crate::detections;
use crate::model::{Cluster, Pod, PodKey, TenantName};

/// What this node's label reserves it for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProfile {
    /// The node label (`guard.nodeTenantLabel`).
    pub label: String,
    /// Its value: the one tenant allowed here.
    pub tenant: String,
    /// `detect` or `block` (`off` has no profile).
    pub mode: GuardMode,
}

/// The foreign pods on this node and the profile that makes them foreign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Foreign {
    pub profile: Option<NodeProfile>,
    /// Foreign pod → its tenant.
    pub pods: BTreeMap<PodKey, TenantName>,
}

impl NodeProfile {
    /// The profile of this node, if its labels name a tenant and the detection is not off.
    /// An empty value names no tenant, as an empty namespace tenant label does.
    pub fn of(cluster: &Cluster, config: &Config) -> Option<Self> {
        let mode = config.guard.mode(&detections::FOREIGN_TENANT);
        if mode == GuardMode::Off {
            return None;
        }
        let label = &config.guard.node_tenant_label;
        let tenant = cluster.node_labels.get(label).filter(|value| !value.is_empty())?;
        Some(Self { label: label.clone(), tenant: tenant.to_string(), mode })
    }

    fn is_foreign(&self, namespace: &str, tenant: &TenantName, config: &Config) -> bool {
        match tenant {
            TenantName::OwnNamespace(_) => false,
            TenantName::Label(name) => **name != *self.tenant && !config.guard.exempt_namespaces.iter().any(|ns| ns == namespace),
        }
    }
}

impl Foreign {
    /// The foreign pods among `on_node` (the pods running on this node); `tenants` is the
    /// tenant of every namespace.
    pub fn find<'a>(
        cluster: &Cluster,
        config: &Config,
        on_node: impl IntoIterator<Item = &'a PodKey>,
        tenants: &BTreeMap<String, TenantName>,
    ) -> Self {
        let Some(profile) = NodeProfile::of(cluster, config) else { return Self::default() };
        let pods = on_node
            .into_iter()
            .filter_map(|key| Some((key, tenants.get(&*key.namespace)?)))
            .filter(|(key, tenant)| profile.is_foreign(&key.namespace, tenant, config))
            .map(|(key, tenant)| (key.clone(), tenant.clone()))
            .collect();
        Self { profile: Some(profile), pods }
    }

    /// Whether `pod`'s entries carry `ENDPOINT_FOREIGN` (foreign, in block mode).
    pub fn blocks(&self, pod: &PodKey) -> bool {
        self.profile.as_ref().is_some_and(|p| p.mode == GuardMode::Block) && self.pods.contains_key(pod)
    }
}

/// Whether `pod` runs on this node as far as its spec says: without a node name in the
/// config (lab, one-node cluster) or in the pod, it does.
pub fn scheduled_here(config: &Config, pod: &Pod) -> bool {
    match (&config.node_name, &pod.node_name) {
        (Some(node), Some(pod_node)) => **node == **pod_node,
        _ => true,
    }
}

#[cfg(test)]
#[path = "foreign_tests.rs"]
mod tests;
