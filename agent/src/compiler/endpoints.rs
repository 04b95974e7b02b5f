//! Per-pod facts the maps need: tenant, shared-service group, cgroup resolution.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use moat_common::maps::SharedPortKey;

use super::error::{check_collision, CompileError};
use crate::config::{Config, PortSpec};
use crate::model::selector::matches_labels;
use crate::model::{Cluster, Labels, Namespace, PodKey, TenantName};
use crate::node::cgroups::PodRef;

pub(crate) struct Tenants {
    pub of_namespace: BTreeMap<String, TenantName>,
}

/// The tenant of every namespace, including namespaces only pods mention.
pub(crate) fn tenants(cluster: &Cluster, config: &Config) -> Result<Tenants, CompileError> {
    let source = config.tenants();
    let mut of_namespace = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let implied = cluster
        .pods
        .keys()
        .map(|key| &*key.namespace)
        .filter(|ns| !cluster.namespaces.contains_key(*ns));
    let implied: Vec<Namespace> = implied
        .map(|name| Namespace {
            name: name.to_string(),
            labels: Labels::new(),
        })
        .collect();
    for namespace in cluster.namespaces.values().chain(implied.iter()) {
        let name = source.tenant_of(namespace);
        check_collision(&mut seen, &name)?;
        of_namespace.insert(namespace.name.clone(), name);
    }
    for network in &config.tenant_networks {
        check_collision(&mut seen, &TenantName::Label(network.tenant.as_str().into()))?;
    }
    Ok(Tenants { of_namespace })
}

/// One declared service every tenant may reach.
pub(crate) struct Service {
    name: String,
    namespace: String,
    match_labels: Labels,
    ports: Vec<PortSpec>,
}

/// The shared services of `config`: cluster DNS (if enabled) first, then `sharedServices`.
pub(crate) fn services(config: &Config) -> Vec<Service> {
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
    services
}

/// A pod may belong to several shared services; each distinct set of services is one group
/// with the union of their ports, since an endpoint carries a single group id. The id is the
/// bit mask of the services (config validation keeps them within 32), so it depends on the
/// group alone, never on which other pods exist.
pub(crate) fn group_of(services: &[Service], pod: &PodKey, labels: &Labels) -> u32 {
    services
        .iter()
        .enumerate()
        .filter(|(_, s)| *s.namespace == *pod.namespace && matches_labels(&s.match_labels, labels))
        .fold(0, |mask, (index, _)| {
            mask | 1u32.checked_shl(index as u32).unwrap_or(0)
        })
}

fn members(services: &[Service], group: u32) -> impl Iterator<Item = &Service> {
    services
        .iter()
        .enumerate()
        .filter(move |(index, _)| group & 1u32.checked_shl(*index as u32).unwrap_or(0) != 0)
        .map(|(_, s)| s)
}

/// The `SHARED_PORTS` entries of `group`.
pub(crate) fn group_ports(services: &[Service], group: u32) -> Vec<SharedPortKey> {
    let mut ports = Vec::new();
    for service in members(services, group) {
        if service.ports.is_empty() {
            ports.push(SharedPortKey {
                shared: group,
                port: 0,
                protocol: 0,
                _pad: 0,
            });
        }
        for port in &service.ports {
            ports.push(SharedPortKey {
                shared: group,
                port: port.port,
                protocol: port.protocol.number(),
                _pad: 0,
            });
        }
    }
    ports
}

/// `cluster-dns+registry`: the names of the group's services.
pub(crate) fn group_name(services: &[Service], group: u32) -> String {
    members(services, group)
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// Every pod's group, for the full compiler.
pub(super) struct SharedGroups {
    services: Vec<Service>,
    groups: BTreeSet<u32>,
    of_pod: BTreeMap<PodKey, u32>,
}

impl SharedGroups {
    pub fn new(cluster: &Cluster, config: &Config) -> Self {
        let services = services(config);
        let mut groups = BTreeSet::new();
        let mut of_pod = BTreeMap::new();
        for (key, pod) in &cluster.pods {
            let id = group_of(&services, key, &pod.labels);
            if id != 0 {
                groups.insert(id);
                of_pod.insert(key.clone(), id);
            }
        }
        Self {
            services,
            groups,
            of_pod,
        }
    }

    pub fn group_of(&self, pod: &PodKey) -> u32 {
        self.of_pod.get(pod).copied().unwrap_or(0)
    }

    pub fn ports(&self) -> BTreeSet<SharedPortKey> {
        self.groups
            .iter()
            .flat_map(|id| group_ports(&self.services, *id))
            .collect()
    }

    pub fn names(&self) -> BTreeMap<u32, String> {
        self.groups
            .iter()
            .map(|id| (*id, group_name(&self.services, *id)))
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
        let by_uid = cluster
            .pods
            .iter()
            .filter_map(|(key, pod)| Some((pod.uid.as_deref()?, key)))
            .collect();
        Self { cluster, by_uid }
    }

    pub fn resolve(&self, pod_ref: &PodRef) -> Option<&'a PodKey> {
        match pod_ref {
            PodRef::Key(key) => self.cluster.pods.get_key_value(key).map(|(key, _)| key),
            PodRef::Uid(uid) => self.by_uid.get(uid.as_str()).copied(),
        }
    }
}
