//! Whom a rule's peers cover. Evaluated once per (policy, direction, rule) and shared by
//! every policy set the policy belongs to; pods are looked at by namespace, and a
//! namespace selector is evaluated once per namespace rather than once per pod.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use moat_common::maps::NetworkKey;

use super::{contains, select, Direction, PodFacts, PolicyCompileError};
use crate::compiler::network_key;
use crate::model::policy::{Peer, Policy, Rule};
use crate::model::selector;
use crate::model::{Cluster, Labels};

/// Whom a rule's peers cover.
#[derive(Clone)]
pub(super) enum Target<'a> {
    /// Every peer, pods or not.
    Any,
    Pod(&'a PodFacts<'a>),
    Block(u64),
    /// A pod covered only through an ipBlock (for named ports, which need the pod's ports).
    PodInBlock(&'a PodFacts<'a>),
}

/// The pods, indexed for peer evaluation.
pub(super) struct Pods<'a> {
    pub all: &'a [PodFacts<'a>],
    /// Indices into `all` per namespace, in `all`'s order (namespaces sorted, as pod keys are).
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    /// Each namespace's labels plus `kubernetes.io/metadata.name`.
    namespace_labels: BTreeMap<&'a str, Labels>,
    /// Each pod's addresses as host prefixes.
    hosts: Vec<Vec<NetworkKey>>,
}

impl<'a> Pods<'a> {
    pub fn new(all: &'a [PodFacts<'a>], cluster: &Cluster) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, pod) in all.iter().enumerate() {
            by_namespace.entry(pod.key.namespace.as_str()).or_default().push(index);
        }
        let namespace_labels = by_namespace.keys().map(|namespace| (*namespace, namespace_labels(cluster, namespace))).collect();
        let hosts = all
            .iter()
            .map(|pod| {
                pod.ips
                    .iter()
                    .map(|ip| network_key(&crate::config::Cidr { addr: *ip, prefix_len: if ip.is_ipv4() { 32 } else { 128 } }))
                    .collect()
            })
            .collect();
        Self { all, by_namespace, namespace_labels, hosts }
    }

    /// Pods of one namespace, in order.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = &'a PodFacts<'a>> + '_ {
        self.by_namespace.get(namespace).into_iter().flatten().map(|index| &self.all[*index])
    }
}

/// Namespace labels, with the `kubernetes.io/metadata.name` label the API server always sets.
fn namespace_labels(cluster: &Cluster, namespace: &str) -> Labels {
    let mut labels = cluster.namespaces.get(namespace).map(|ns| ns.labels.clone()).unwrap_or_default();
    labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| namespace.into());
    labels
}

/// Targets already evaluated, by (policy index, direction, rule index).
pub(super) type Cache<'a> = HashMap<(usize, Direction, usize), Vec<Target<'a>>>;

/// The targets of rule `index` of `policy` (policy number `policy_index`), from the cache or
/// evaluated now. Errors are those of the first evaluation: an invalid selector is reported
/// wherever it would be met first, whatever the labels.
#[allow(clippy::too_many_arguments)]
pub(super) fn cached<'c, 'a>(
    cache: &'c mut Cache<'a>,
    policy_index: usize,
    policy: &Policy,
    rule: &Rule,
    pods: &Pods<'a>,
    blocks: &BTreeMap<NetworkKey, u64>,
    direction: Direction,
    index: usize,
) -> Result<&'c [Target<'a>], PolicyCompileError> {
    match cache.entry((policy_index, direction, index)) {
        std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
        std::collections::hash_map::Entry::Vacant(entry) => {
            Ok(entry.insert(targets(policy, rule, pods, blocks, direction, index)?))
        }
    }
}

fn targets<'a>(
    policy: &Policy,
    rule: &Rule,
    pods: &Pods<'a>,
    blocks: &BTreeMap<NetworkKey, u64>,
    direction: Direction,
    index: usize,
) -> Result<Vec<Target<'a>>, PolicyCompileError> {
    let Some(peers) = &rule.peers else { return Ok(vec![Target::Any]) };
    let field = format!("spec.{}[{index}]", direction.as_str());
    let mut out = Vec::new();
    for peer in peers {
        match peer {
            Peer::Pods { namespaces, pods: pod_selector } => {
                // A pod selector is checked for validity even where no namespace matches, as
                // evaluating it pod by pod would.
                let check_pods = |selector: &LabelSelector| -> Result<(), PolicyCompileError> {
                    selector::validate(selector).map_err(|source| PolicyCompileError::Selector {
                        policy: policy.key.clone(),
                        field: format!("{field}.podSelector"),
                        source: Box::new(source),
                    })
                };
                let mut namespaces_in: Vec<&str> = Vec::new();
                for (position, (namespace, labels)) in pods.namespace_labels.iter().enumerate() {
                    let namespace_ok = match namespaces {
                        None => *namespace == policy.key.namespace,
                        Some(selector) => select(policy, selector, labels, &format!("{field}.namespaceSelector"))?,
                    };
                    if position == 0 {
                        if let Some(selector) = pod_selector {
                            check_pods(selector)?;
                        }
                    }
                    if namespace_ok {
                        namespaces_in.push(namespace);
                    }
                }
                for namespace in namespaces_in {
                    for pod in pods.in_namespace(namespace) {
                        let pod_ok = match pod_selector {
                            None => true,
                            Some(selector) => select(policy, selector, pod.labels, &format!("{field}.podSelector"))?,
                        };
                        if pod_ok {
                            out.push(Target::Pod(pod));
                        }
                    }
                }
            }
            Peer::Block { cidr, except } => {
                let outer = network_key(cidr);
                let excluded: Vec<NetworkKey> = except.iter().map(network_key).collect();
                for (range, id) in blocks {
                    if contains(&outer, range) && !excluded.iter().any(|e| contains(e, range)) {
                        out.push(Target::Block(*id));
                    }
                }
                for (pod, hosts) in pods.all.iter().zip(&pods.hosts) {
                    let inside = hosts.iter().any(|host| contains(&outer, host) && !excluded.iter().any(|e| contains(e, host)));
                    if inside {
                        out.push(Target::PodInBlock(pod));
                    }
                }
            }
        }
    }
    Ok(dedup(out))
}

/// Pods with one identity share namespace, labels and named ports, so they yield the same
/// entries: keep the first of each (per kind of target).
fn dedup(targets: Vec<Target<'_>>) -> Vec<Target<'_>> {
    let mut seen = std::collections::HashSet::new();
    targets
        .into_iter()
        .filter(|target| match target {
            Target::Pod(pod) => seen.insert((0u8, pod.identity)),
            Target::PodInBlock(pod) => seen.insert((1u8, pod.identity)),
            Target::Any | Target::Block(_) => true,
        })
        .collect()
}
