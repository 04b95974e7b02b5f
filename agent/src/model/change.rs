//! One change to the model, as a watch event carries it: an object set (added or updated)
//! or removed. Sources emit changes; the compiler applies them incrementally.

use std::sync::Arc;

use super::cnp::ClusterNetworkPolicy;
use super::policy::Policy;
use super::cluster::Cluster;
use super::labels::Labels;
use super::objects::{Namespace, Node, ObjectKey, Pod, PodKey, Service};

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Namespace(String, Option<Namespace>),
    Pod(PodKey, Option<Pod>),
    /// Shared with the model and the compiler: a policy is kept once.
    Policy(ObjectKey, Option<Arc<Policy>>),
    Service(ObjectKey, Option<Service>),
    ClusterPolicy(String, Option<Arc<ClusterNetworkPolicy>>),
    /// Any Node of the cluster, this one included.
    Node(String, Option<Node>),
    /// This node's labels (empty when the Node is gone).
    NodeLabels(Labels),
}

impl Cluster {
    /// Applies `change`; returns the value it replaced, or None when nothing changed.
    pub fn apply(&mut self, change: Change) -> Option<Change> {
        fn put<K: Ord + Clone, V: PartialEq>(
            map: &mut std::collections::BTreeMap<K, V>,
            key: &K,
            value: Option<V>,
        ) -> Option<Option<V>> {
            if map.get(key) == value.as_ref() {
                return None;
            }
            Some(match value {
                Some(value) => map.insert(key.clone(), value),
                None => map.remove(key),
            })
        }
        Some(match change {
            Change::Namespace(name, value) => {
                Change::Namespace(name.clone(), put(&mut self.namespaces, &name, value)?)
            }
            Change::Pod(key, value) => Change::Pod(key.clone(), put(&mut self.pods, &key, value)?),
            Change::Policy(key, value) => {
                Change::Policy(key.clone(), put(&mut self.network_policies, &key, value)?)
            }
            Change::Service(key, value) => {
                Change::Service(key.clone(), put(&mut self.services, &key, value)?)
            }
            Change::ClusterPolicy(name, value) => {
                Change::ClusterPolicy(name.clone(), put(&mut self.cluster_network_policies, &name, value)?)
            }
            Change::Node(name, value) => Change::Node(name.clone(), put(&mut self.nodes, &name, value)?),
            Change::NodeLabels(labels) if labels == self.node_labels => return None,
            Change::NodeLabels(labels) => {
                Change::NodeLabels(std::mem::replace(&mut self.node_labels, labels))
            }
        })
    }

    /// Every object as a change, as a source's first list delivers them.
    pub fn changes_from_empty(self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(
            self.namespaces.len()
                + self.pods.len()
                + self.network_policies.len()
                + self.services.len()
                + self.cluster_network_policies.len()
                + self.nodes.len()
                + 1,
        );
        changes.extend(
            self.namespaces
                .into_iter()
                .map(|(name, ns)| Change::Namespace(name, Some(ns))),
        );
        changes.extend(
            self.network_policies
                .into_iter()
                .map(|(key, policy)| Change::Policy(key, Some(policy))),
        );
        changes.extend(
            self.pods
                .into_iter()
                .map(|(key, pod)| Change::Pod(key, Some(pod))),
        );
        changes.extend(
            self.services
                .into_iter()
                .map(|(key, service)| Change::Service(key, Some(service))),
        );
        changes.extend(
            self.cluster_network_policies
                .into_iter()
                .map(|(name, policy)| Change::ClusterPolicy(name, Some(policy))),
        );
        changes.extend(self.nodes.into_iter().map(|(name, node)| Change::Node(name, Some(node))));
        changes.push(Change::NodeLabels(self.node_labels));
        changes
    }

    /// The changes that turn `self` into `new` (for sources that re-read everything).
    pub fn changes_to(&self, new: &Cluster) -> Vec<Change> {
        let mut changes = Vec::new();
        diff(
            &self.namespaces,
            &new.namespaces,
            &mut changes,
            Change::Namespace,
        );
        diff(
            &self.network_policies,
            &new.network_policies,
            &mut changes,
            Change::Policy,
        );
        diff(&self.pods, &new.pods, &mut changes, Change::Pod);
        diff(&self.services, &new.services, &mut changes, Change::Service);
        diff(
            &self.cluster_network_policies,
            &new.cluster_network_policies,
            &mut changes,
            Change::ClusterPolicy,
        );
        diff(&self.nodes, &new.nodes, &mut changes, Change::Node);
        if self.node_labels != new.node_labels {
            changes.push(Change::NodeLabels(new.node_labels.clone()));
        }
        changes
    }
}

fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &std::collections::BTreeMap<K, V>,
    new: &std::collections::BTreeMap<K, V>,
    out: &mut Vec<Change>,
    make: impl Fn(K, Option<V>) -> Change,
) {
    for (key, value) in new {
        if old.get(key) != Some(value) {
            out.push(make(key.clone(), Some(value.clone())));
        }
    }
    out.extend(
        old.keys()
            .filter(|key| !new.contains_key(*key))
            .map(|key| make(key.clone(), None)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_to_then_apply_gives_the_new_cluster() {
        let mut old = Cluster::default();
        old.namespaces.insert(
            "a".into(),
            Namespace {
                name: "a".into(),
                labels: Labels::new(),
            },
        );
        old.namespaces.insert(
            "gone".into(),
            Namespace {
                name: "gone".into(),
                labels: Labels::new(),
            },
        );
        let mut new = Cluster::default();
        new.namespaces.insert(
            "a".into(),
            Namespace {
                name: "a".into(),
                labels: [("tenant".into(), "x".into())].into(),
            },
        );
        new.node_labels.insert("zone", "z");
        old.nodes.insert("n1".into(), Node { labels: Labels::new(), addresses: vec!["192.0.2.1".parse().unwrap()] });
        new.nodes.insert("n1".into(), Node { labels: Labels::new(), addresses: vec!["192.0.2.2".parse().unwrap()] });
        let changes = old.changes_to(&new);
        assert_eq!(changes.len(), 4);
        let mut applied = old.clone();
        for change in changes {
            assert!(applied.apply(change).is_some());
        }
        assert_eq!(applied, new);
        assert!(
            applied
                .apply(Change::NodeLabels(new.node_labels.clone()))
                .is_none(),
            "no change, no old value"
        );
    }
}
