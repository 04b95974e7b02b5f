//! The standing index rules are evaluated over, and which local sets a change may affect.

use std::collections::BTreeSet;

use moat_common::maps::NetworkKey;

use super::Incremental;
use crate::compiler::mapped;
use crate::compiler::policy::targets::{host_key, in_block};
use crate::compiler::policy::{self, Direction, PeerIndex, PodView};
use crate::model::policy::{Peer, PortRef};
use crate::model::selector;
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

    /// Marks the local sets whose rules could cover `pod` (its old or its new version).
    pub(super) fn mark_sets_for_pod(&mut self, pod: &Pod) {
        if self.dirty.all_sets {
            return;
        }
        let namespace_labels = self.namespace_labels.get(&pod.key.namespace);
        let hosts: Vec<NetworkKey> = if pod.host_network {
            Vec::new()
        } else {
            pod.ips.iter().map(|ip| host_key(*ip)).collect()
        };
        let has_named_port = pod.ports.iter().any(|port| port.name.is_some());
        let mut marked = BTreeSet::new();
        for set in self.set_rules.keys() {
            let Some(state) = self.sets.get(set) else {
                continue;
            };
            let covers = state
                .set
                .policies
                .iter()
                .filter_map(|key| self.policies.get(key))
                .any(|policy| {
                    policy::rules_of(policy, state.set.direction)
                        .iter()
                        .any(|rule| match &rule.peers {
                            // Every peer: pods matter only for egress named ports, resolved per pod.
                            None => {
                                state.set.direction == Direction::Egress
                                    && has_named_port
                                    && rule
                                        .ports
                                        .iter()
                                        .flatten()
                                        .any(|port| matches!(port.port, PortRef::Named(_)))
                            }
                            Some(peers) => peers.iter().any(|peer| match peer {
                                Peer::Pods { namespaces, pods } => {
                                    let namespace_ok = match (namespaces, namespace_labels) {
                                        (None, _) => pod.key.namespace == policy.key.namespace,
                                        (Some(selector), Some(labels)) => matches(selector, labels),
                                        // Not yet indexed (its first pod arrives now): look anyway.
                                        (Some(_), None) => true,
                                    };
                                    namespace_ok
                                        && pods
                                            .as_ref()
                                            .is_none_or(|selector| matches(selector, &pod.labels))
                                }
                                Peer::Block { cidr, except } => {
                                    let outer = crate::compiler::network_key(cidr);
                                    let excluded: Vec<NetworkKey> =
                                        except.iter().map(crate::compiler::network_key).collect();
                                    hosts.iter().any(|host| in_block(host, &outer, &excluded))
                                }
                            }),
                        })
                });
            if covers {
                marked.insert(*set);
            }
        }
        self.dirty.sets.extend(marked);
    }

    /// Marks the local sets whose rules select namespaces by labels `old` or `new`.
    pub(super) fn mark_sets_for_namespace(&mut self, old: &Labels, new: &Labels) {
        if self.dirty.all_sets {
            return;
        }
        let mut marked = BTreeSet::new();
        for set in self.set_rules.keys() {
            let Some(state) = self.sets.get(set) else {
                continue;
            };
            let covers = state
                .set
                .policies
                .iter()
                .filter_map(|key| self.policies.get(key))
                .any(|policy| {
                    policy::rules_of(policy, state.set.direction)
                        .iter()
                        .flat_map(|rule| rule.peers.iter().flatten())
                        .any(|peer| match peer {
                            Peer::Pods {
                                namespaces: Some(selector),
                                ..
                            } => matches(selector, old) || matches(selector, new),
                            _ => false,
                        })
                });
            if covers {
                marked.insert(*set);
            }
        }
        self.dirty.sets.extend(marked);
    }
}

/// A selector that does not evaluate marks the set: evaluating its rules reports the error.
fn matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &Labels,
) -> bool {
    selector::matches(selector, labels).unwrap_or(true)
}

impl PeerIndex for Incremental {
    fn namespaces(&self) -> Vec<(&str, &Labels)> {
        self.namespace_labels
            .iter()
            .map(|(name, labels)| (name.as_str(), labels))
            .collect()
    }

    fn in_namespace(&self, namespace: &str) -> Vec<PodView<'_>> {
        self.pods_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.view(key))
            .collect()
    }

    fn in_block(&self, outer: &NetworkKey, excluded: &[NetworkKey]) -> Vec<PodView<'_>> {
        // Addresses in key order are numeric order: the block is one range of keys.
        let low = outer.addr;
        let mut high = outer.addr;
        for (i, byte) in high.iter_mut().enumerate() {
            let bits = outer.prefix_len.saturating_sub(i as u32 * 8).min(8);
            *byte |= if bits >= 8 { 0 } else { 0xffu8 >> bits };
        }
        let mut pods = BTreeSet::new();
        for (ip, claimants) in self.claims.range(low..=high).map(|(_, claim)| claim) {
            if in_block(&host_key(*ip), outer, excluded) {
                pods.extend(claimants.iter());
            }
        }
        pods.into_iter().filter_map(|key| self.view(key)).collect()
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
