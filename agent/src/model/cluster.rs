//! Everything the sources know, in one value: the compiler's input.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::labels::Labels;
use super::objects::{Namespace, Node, ObjectKey, Pod, PodKey, Service};
use super::{cnp, policy};

/// Everything the sources know. Keyed maps keep iteration order deterministic, so the
/// compiler's output (and explain's) does not depend on input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<PodKey, Pod>,
    /// Normalized once, by the source; the compiler shares them.
    pub network_policies: BTreeMap<ObjectKey, Arc<policy::Policy>>,
    pub services: BTreeMap<ObjectKey, Service>,
    /// ClusterNetworkPolicies by name.
    pub cluster_network_policies: BTreeMap<String, Arc<cnp::ClusterNetworkPolicy>>,
    /// Every Node by name (their addresses are `nodes` peers').
    pub nodes: BTreeMap<String, Node>,
    /// Labels of this agent's own Node (they select node profiles); empty when the source
    /// has no Node (the API server without a node name, files without a matching Node).
    pub node_labels: Labels,
}
