//! Per-pod facts the maps need: tenant, shared-service group, cgroup resolution.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use moat_common::maps::SharedPortKey;

use super::{check_collision, CompileError};
use crate::config::{Config, PortSpec};
use crate::model::selector::matches_labels;
use crate::model::{Cluster, Labels, Namespace, PodKey, TenantName};
use crate::node::cgroups::PodRef;

pub(super) struct Tenants {
    pub of_namespace: BTreeMap<String, TenantName>,
}

/// The tenant of every namespace, including namespaces only pods mention.
pub(super) fn tenants(cluster: &Cluster, config: &Config) -> Result<Tenants, CompileError> {
    let source = config.tenants();
    let mut of_namespace = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let implied = cluster.pods.keys().map(|key| &key.namespace).filter(|ns| !cluster.namespaces.contains_key(*ns));
    let implied: Vec<Namespace> =
        implied.map(|name| Namespace { name: name.clone(), labels: Labels::new() }).collect();
    for namespace in cluster.namespaces.values().chain(implied.iter()) {
        let name = source.tenant_of(namespace);
        check_collision(&mut seen, &name)?;
        of_namespace.insert(namespace.name.clone(), name);
    }
    for network in &config.tenant_networks {
        check_collision(&mut seen, &TenantName::Label(network.tenant.clone()))?;
    }
    Ok(Tenants { of_namespace })
}

/// One declared service every tenant may reach.
struct Service {
    name: String,
    namespace: String,
    match_labels: Labels,
    ports: Vec<PortSpec>,
}

/// A pod may belong to several shared services; each distinct set of services is one group
/// with the union of their ports, since an endpoint carries a single group id.
pub(super) struct SharedGroups {
    services: Vec<Service>,
    groups: BTreeMap<BTreeSet<usize>, u32>,
    of_pod: BTreeMap<PodKey, u32>,
}

impl SharedGroups {
    pub fn new(cluster: &Cluster, config: &Config) -> Self {
        let mut services = Vec::new();
        if config.cluster_dns.enabled {
            services.push(Service {
                name: "cluster-dns".into(),
                namespace: config.cluster_dns.namespace.clone(),
                match_labels: config.cluster_dns.match_labels.clone(),
                ports: config.cluster_dns.ports.clone(),
            });
        }
        services.extend(config.shared_services.iter().map(|service| Service {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            match_labels: service.match_labels.clone(),
            ports: service.ports.clone(),
        }));
        let mut groups = BTreeMap::new();
        let mut of_pod = BTreeMap::new();
        for (key, pod) in &cluster.pods {
            let members: BTreeSet<usize> = services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.namespace == key.namespace && matches_labels(&s.match_labels, &pod.labels))
                .map(|(index, _)| index)
                .collect();
            if members.is_empty() {
                continue;
            }
            let next = groups.len() as u32 + 1;
            let id = *groups.entry(members).or_insert(next);
            of_pod.insert(key.clone(), id);
        }
        Self { services, groups, of_pod }
    }

    pub fn group_of(&self, pod: &PodKey) -> u32 {
        self.of_pod.get(pod).copied().unwrap_or(0)
    }

    pub fn ports(&self) -> BTreeSet<SharedPortKey> {
        let mut ports = BTreeSet::new();
        for (members, id) in &self.groups {
            for index in members {
                let service = &self.services[*index];
                if service.ports.is_empty() {
                    ports.insert(SharedPortKey { shared: *id, port: 0, protocol: 0, _pad: 0 });
                }
                for port in &service.ports {
                    ports.insert(SharedPortKey { shared: *id, port: port.port, protocol: port.protocol.number(), _pad: 0 });
                }
            }
        }
        ports
    }

    pub fn names(&self) -> BTreeMap<u32, String> {
        self.groups
            .iter()
            .map(|(members, id)| {
                let names: Vec<&str> = members.iter().map(|i| self.services[*i].name.as_str()).collect();
                (*id, names.join("+"))
            })
            .collect()
    }
}

/// Finds the pod a cgroup belongs to, if the cluster has it. Built once per compile: a node
/// has hundreds of pod cgroups and a cluster thousands of pods, so UIDs are indexed.
pub(super) struct PodLookup<'a> {
    cluster: &'a Cluster,
    by_uid: HashMap<&'a str, &'a PodKey>,
}

impl<'a> PodLookup<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let by_uid = cluster.pods.iter().filter_map(|(key, pod)| Some((pod.uid.as_deref()?, key))).collect();
        Self { cluster, by_uid }
    }

    pub fn resolve(&self, pod_ref: &PodRef) -> Option<&'a PodKey> {
        match pod_ref {
            PodRef::Key(key) => self.cluster.pods.get_key_value(key).map(|(key, _)| key),
            PodRef::Uid(uid) => self.by_uid.get(uid.as_str()).copied(),
        }
    }
}
