//! The manifests policy source: Kubernetes objects read from YAML or JSON files (hand-written,
//! or `kubectl get pods,namespaces,networkpolicies -A -o yaml` output) and turned into the
//! [`Cluster`] model.
//!
//! Input is checked strictly, because a security agent must not quietly enforce less than the
//! files say: every problem is an error naming the file, the document (and List item), the
//! object and the field. Two things are deliberately lenient:
//! - Unknown fields inside objects are accepted. `kubectl` output from newer clusters carries
//!   fields the bundled k8s-openapi types do not know, and refusing them would make the agent
//!   unusable after a cluster upgrade; they never feed the model.
//! - Kinds other than Namespace, Pod, Node, NetworkPolicy and (`v1alpha2`)
//!   ClusterNetworkPolicy are skipped and counted in [`Loaded::skipped`], so a full dump of a
//!   namespace can be fed in as-is — except policy objects moat does not enforce (other
//!   ClusterNetworkPolicy versions, Calico's `projectcalico.org/v3` NetworkPolicy, see
//!   [`crate::sources::unenforced`]): those are listed by name in [`Loaded::unenforced`] and
//!   reported loudly. An old version of a supported object
//!   (`extensions/v1beta1` NetworkPolicy) is an error, as skipping it would drop policy.
//!
//! Node objects (`kubectl get nodes -o yaml`) give the addresses ClusterNetworkPolicy `nodes`
//! peers match, and this node's labels, which select node profiles: the Node named like the
//! agent's `nodeName`, or without one the only Node in the files (several Nodes and no
//! `nodeName` is an error naming them all).
//!
//! Directories are read non-recursively; names starting with `.` are ignored (editor lock and
//! swap files, the `..data` links of ConfigMap volumes).

mod build;
mod error;
mod read;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::model::{Cluster, Labels};
use crate::sources::unenforced::Unenforced;

pub use build::build_cluster;
pub use error::ManifestError;
pub(crate) use read::list_files;
pub use read::{parse_text, read_documents};

/// Largest file read; a bigger one is an error rather than a memory spike.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most objects (after List flattening) across all files of one load.
pub const MAX_OBJECTS: usize = 100_000;

/// Where an object came from: file path plus document index (and List item index), for
/// errors. Both indexes count from 1, as a person counts: `document 2` is the second YAML
/// document of the file, `item 5` the fifth entry of its `items`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.file.display(), self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        f.write_str(")")
    }
}

/// One raw Kubernetes object as read from a file.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub value: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub cluster: Cluster,
    /// Objects not in the model, by kind (and `Pod (Succeeded/Failed)` for finished pods).
    pub skipped: BTreeMap<String, usize>,
    /// Every Node read, by name; [`Loaded::for_node`] puts this node's labels in the model.
    pub nodes: BTreeMap<String, NodeFound>,
    /// Policy objects read but not enforced (other kinds, other vendors' CRDs).
    pub unenforced: Unenforced,
}

/// A Node object in the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFound {
    pub labels: Labels,
    pub origin: Origin,
}

impl Loaded {
    /// Sets `cluster.node_labels` to this node's: the Node named `node_name`, or without a
    /// name the only Node read. No matching Node leaves them empty (no node profile).
    pub fn for_node(mut self, node_name: Option<&str>) -> Result<Self, ManifestError> {
        let labels = match node_name {
            Some(name) => self.nodes.get(name).map(|node| node.labels.clone()),
            None if self.nodes.len() > 1 => {
                let nodes = self.nodes.iter().map(|(name, node)| (name.clone(), node.origin.clone())).collect();
                return Err(ManifestError::SeveralNodes { nodes });
            }
            None => self.nodes.values().next().map(|node| node.labels.clone()),
        };
        self.cluster.node_labels = labels.unwrap_or_default();
        Ok(self)
    }
}

/// [`load_for_node`] without a node name.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    load_for_node(paths, None)
}

/// [`read_documents`] + [`build_cluster`] + [`Loaded::for_node`].
pub fn load_for_node(paths: &[PathBuf], node_name: Option<&str>) -> Result<Loaded, ManifestError> {
    build_cluster(&read_documents(paths)?)?.for_node(node_name)
}

#[cfg(test)]
#[path = "manifests/read_tests.rs"]
mod read_tests;

#[cfg(test)]
#[path = "manifests/build_tests.rs"]
mod build_tests;

#[cfg(test)]
#[path = "manifests/node_tests.rs"]
mod node_tests;

#[cfg(test)]
#[path = "manifests/policy_tests.rs"]
mod policy_tests;
