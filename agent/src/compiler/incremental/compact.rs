//! Packing the compiler's B-trees after a list. The first list (and a re-list after 410
//! Gone) inserts objects in key order, the order the API server returns them; a B-tree
//! filled that way splits every full leaf in two and keeps leaves about half full, so the
//! per-object maps took nearly twice their entries' size. Rebuilt from their sorted
//! entries (`FromIterator` bulk-builds full leaves), they hold the same entries in about
//! 55% of the memory. Single watch events afterwards insert where they land, as before.

use std::collections::{BTreeMap, BTreeSet};

use super::Incremental;
use crate::compiler::desired::Desired;
use crate::model::Cluster;

/// Below this many entries a tree is a node or two: nothing to gain.
const WORTH_PACKING: usize = 64;

pub(super) trait Pack {
    fn pack(&mut self);
}

impl<K: Ord, V> Pack for BTreeMap<K, V> {
    fn pack(&mut self) {
        if self.len() > WORTH_PACKING {
            *self = std::mem::take(self).into_iter().collect();
        }
    }
}

impl<K: Ord> Pack for BTreeSet<K> {
    fn pack(&mut self) {
        if self.len() > WORTH_PACKING {
            *self = std::mem::take(self).into_iter().collect();
        }
    }
}

impl Incremental {
    /// Packs every map that grows with the cluster. Contents and order are unchanged.
    pub(super) fn pack(&mut self) {
        pack_cluster(&mut self.cluster);
        pack_desired(&mut self.desired);
        self.policies.pack();
        self.namespace_labels.pack();
        self.tenants.pack();
        self.tenant_refs.pack();
        self.pods.pack();
        self.by_tag.pack();
        self.claims.pack();
        self.local_pods.pack();
        self.local_claims.pack();
        self.service_claims.pack();
        self.sets.pack();
        for rules in self.set_rules.values_mut() {
            rules.pack();
        }
        self.blocks.pack();
        self.identities.pack();
    }
}

fn pack_cluster(cluster: &mut Cluster) {
    cluster.namespaces.pack();
    cluster.pods.pack();
    cluster.network_policies.pack();
    cluster.services.pack();
    cluster.cluster_network_policies.pack();
    cluster.nodes.pack();
}

fn pack_desired(desired: &mut Desired) {
    desired.local.pack();
    desired.local_addresses.pack();
    desired.pod_addresses.pack();
    desired.remote.pack();
    desired.networks.pack();
    desired.shared_ports.pack();
    desired.tenant_pairs.pack();
    desired.policy_rules.pack();
    desired.cluster_subjects.pack();
    desired.cluster_rules.pack();
    desired.dns_namespaces.pack();
    desired.dns_services.pack();
}
