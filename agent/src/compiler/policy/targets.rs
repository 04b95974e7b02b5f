//! Whom a rule's peers cover. Evaluated over a [`PeerIndex`]: the full compiler's index of
//! every pod (built per compile), or the incremental compiler's standing one. Pods are looked
//! at by namespace, and a namespace selector is evaluated once per namespace, not per pod.

use std::collections::{BTreeMap, HashMap};

use moat_common::maps::NetworkKey;

use super::{contains, Direction, PodFacts};
use crate::compiler::keys::network_key;
use crate::model::policy::{Peer, Policy, Rule};
use crate::model::{Cluster, ContainerPort, Labels};

/// What the rules need of a pod.
#[derive(Clone, Copy, Debug)]
pub struct PodView<'a> {
    pub identity: u64,
    pub labels: &'a Labels,
    pub ports: &'a [ContainerPort],
}

/// The pods, indexed for peer evaluation.
pub trait PeerIndex {
    /// Every namespace that has pods, with its labels plus `kubernetes.io/metadata.name`.
    fn namespaces(&self) -> Vec<(&str, &Labels)>;
    fn in_namespace(&self, namespace: &str) -> Vec<PodView<'_>>;
    /// Pods with an address inside `outer` and in none of `excluded` (hostNetwork pods have
    /// no address of their own).
    fn in_block(&self, outer: &NetworkKey, excluded: &[NetworkKey]) -> Vec<PodView<'_>>;
    /// Every pod.
    fn all(&self) -> Vec<PodView<'_>>;
}

/// Whom a rule's peers cover.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Every peer, pods or not.
    Any,
    Pod(PodView<'a>),
    Block(u64),
    /// A pod covered only through an ipBlock (for named ports, which need the pod's ports).
    PodInBlock(PodView<'a>),
}

/// The full compiler's index: built once per compile over every pod.
pub(super) struct Pods<'a> {
    all: &'a [PodFacts<'a>],
    /// Indices into `all` per namespace, in `all`'s order (namespaces sorted, as pod keys are).
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    namespace_labels: BTreeMap<&'a str, Labels>,
    /// Each pod's addresses as host prefixes.
    hosts: Vec<Vec<NetworkKey>>,
}

impl<'a> Pods<'a> {
    pub fn new(all: &'a [PodFacts<'a>], cluster: &Cluster) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, pod) in all.iter().enumerate() {
            by_namespace
                .entry(&*pod.key.namespace)
                .or_default()
                .push(index);
        }
        let namespace_labels = by_namespace
            .keys()
            .map(|namespace| {
                (
                    *namespace,
                    namespace_labels(
                        cluster.namespaces.get(*namespace).map(|ns| &ns.labels),
                        namespace,
                    ),
                )
            })
            .collect();
        let hosts = all
            .iter()
            .map(|pod| pod.ips.iter().map(|ip| host_key(*ip)).collect())
            .collect();
        Self {
            all,
            by_namespace,
            namespace_labels,
            hosts,
        }
    }
}

fn view<'a>(pod: &'a PodFacts<'a>) -> PodView<'a> {
    PodView {
        identity: pod.identity,
        labels: pod.labels,
        ports: pod.ports,
    }
}

impl PeerIndex for Pods<'_> {
    fn namespaces(&self) -> Vec<(&str, &Labels)> {
        self.namespace_labels
            .iter()
            .map(|(name, labels)| (*name, labels))
            .collect()
    }

    fn in_namespace(&self, namespace: &str) -> Vec<PodView<'_>> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|index| view(&self.all[*index]))
            .collect()
    }

    fn in_block(&self, outer: &NetworkKey, excluded: &[NetworkKey]) -> Vec<PodView<'_>> {
        self.all
            .iter()
            .zip(&self.hosts)
            .filter(|(_, hosts)| hosts.iter().any(|host| in_block(host, outer, excluded)))
            .map(|(pod, _)| view(pod))
            .collect()
    }

    fn all(&self) -> Vec<PodView<'_>> {
        self.all.iter().map(view).collect()
    }
}

/// An address as a host prefix.
pub fn host_key(ip: std::net::IpAddr) -> NetworkKey {
    network_key(&crate::config::Cidr {
        addr: ip,
        prefix_len: if ip.is_ipv4() { 32 } else { 128 },
    })
}

pub fn in_block(host: &NetworkKey, outer: &NetworkKey, excluded: &[NetworkKey]) -> bool {
    contains(outer, host) && !excluded.iter().any(|e| contains(e, host))
}

/// Namespace labels, with the `kubernetes.io/metadata.name` label the API server always sets.
pub fn namespace_labels(labels: Option<&Labels>, namespace: &str) -> Labels {
    let mut labels = labels.cloned().unwrap_or_default();
    if !labels.contains_key("kubernetes.io/metadata.name") {
        labels.insert("kubernetes.io/metadata.name", namespace);
    }
    labels
}

/// A rule of the compile: (policy index, direction, rule index).
pub(super) type RuleAt = (usize, Direction, usize);

/// Targets already evaluated, by rule.
pub(super) type Cache<'a> = HashMap<RuleAt, Vec<Target<'a>>>;

/// The targets of `rule` (of `policy`, at `at`), from the cache or evaluated now.
pub(super) fn cached<'c, 'a>(
    cache: &'c mut Cache<'a>,
    at: RuleAt,
    policy: &Policy,
    rule: &Rule,
    pods: &'a dyn PeerIndex,
    blocks: &BTreeMap<NetworkKey, u64>,
) -> &'c [Target<'a>] {
    cache.entry(at).or_insert_with(|| targets(&policy.key.namespace, rule, at.1, pods, blocks))
}

/// Whom `rule`'s peers cover; a peer without a namespace selector means `own_namespace`.
pub fn targets<'a>(
    own_namespace: &str,
    rule: &Rule,
    direction: Direction,
    pods: &'a dyn PeerIndex,
    blocks: &BTreeMap<NetworkKey, u64>,
) -> Vec<Target<'a>> {
    let Some(peers) = &rule.peers else {
        return vec![Target::Any];
    };
    let mut out = Vec::new();
    for peer in peers {
        match peer {
            Peer::Pods { namespaces, pods: pod_selector } => {
                let namespaces_in = pods.namespaces().into_iter().filter(|(namespace, labels)| match namespaces {
                    None => **namespace == *own_namespace,
                    Some(selector) => selector.matches(labels),
                });
                for (namespace, _) in namespaces_in {
                    for pod in pods.in_namespace(namespace) {
                        if pod_selector.as_ref().is_none_or(|selector| selector.matches(pod.labels)) {
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
                if super::pods_in_blocks_matter(rule, direction) {
                    out.extend(
                        pods.in_block(&outer, &excluded)
                            .into_iter()
                            .map(Target::PodInBlock),
                    );
                }
            }
        }
    }
    dedup(out)
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
