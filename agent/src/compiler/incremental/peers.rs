//! The standing index rules are evaluated over, and which local sets a change may affect.

use moat_common::maps::NetworkKey;

use super::Incremental;
use crate::compiler::keys::mapped;
use crate::compiler::policy::targets::{host_key, in_block};
use crate::compiler::policy::{PeerIndex, PodView};
use crate::model::{Labels, Pod, PodKey};

impl Incremental {
    fn view(&self, key: &PodKey) -> Option<PodView<'_>> {
        let pod = self.cluster.pods.get(key)?;
        let state = self.pods.get(key)?;
        Some(PodView {
            identity: state.identity,
            labels: &pod.labels,
            ports: &pod.ports,
        })
    }

    /// Pods with an address inside `outer` and in none of `excluded`, in address order: a
    /// pod with two addresses in the block comes twice (callers that count pods dedup).
    pub(super) fn keys_in_block(
        &self,
        outer: &NetworkKey,
        excluded: &[NetworkKey],
    ) -> Vec<&PodKey> {
        // Addresses in key order are numeric order: the block is one range of keys.
        let low = outer.addr;
        let mut high = outer.addr;
        for (i, byte) in high.iter_mut().enumerate() {
            let bits = outer.prefix_len.saturating_sub(i as u32 * 8).min(8);
            *byte |= if bits >= 8 { 0 } else { 0xffu8 >> bits };
        }
        let mut pods = Vec::new();
        for (ip, claimants) in self.claims.range(low..=high).map(|(_, claim)| claim) {
            if in_block(&host_key(*ip), outer, excluded) {
                pods.extend(claimants);
            }
        }
        pods
    }
}

impl PeerIndex for Incremental {
    fn namespaces(&self) -> Vec<(&str, &Labels)> {
        self.namespace_labels
            .iter()
            .map(|(name, labels)| (&**name, labels))
            .collect()
    }

    fn in_namespace(&self, namespace: &str) -> Vec<PodView<'_>> {
        super::in_namespace(&self.cluster.pods, namespace)
            .filter_map(|key| self.view(key))
            .collect()
    }

    fn in_block(&self, outer: &NetworkKey, excluded: &[NetworkKey]) -> Vec<PodView<'_>> {
        self.keys_in_block(outer, excluded)
            .into_iter()
            .filter_map(|key| self.view(key))
            .collect()
    }

    fn all(&self) -> Vec<PodView<'_>> {
        self.pods.keys().filter_map(|key| self.view(key)).collect()
    }
}

/// The key form of every address `pod` claims.
pub(super) fn claimed(pod: &Pod) -> Vec<std::net::IpAddr> {
    if pod.host_network {
        return Vec::new();
    }
    let mut ips = pod.ips.clone();
    ips.dedup();
    ips
}

pub(super) fn key_of(ip: std::net::IpAddr) -> [u8; 16] {
    mapped(ip)
}
