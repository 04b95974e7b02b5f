//! Writes the compiler's `Desired` state into the pinned maps.
//!
//! Writes are ordered so that no intermediate state allows what neither the old nor the new
//! state allows: an endpoint whose value changes is first made pending (it may then talk to
//! nothing cross-tenant), then given its new value; removals come last. The generation is
//! bumped at the end so live flows are re-decided under the complete new state.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::Ebpf;
use moat_common::maps::{
    names, Endpoint, NetworkKey, PodAddress, PolicyMatch, Settings, SharedPortKey, TenantPairKey, TierMatch,
    TierSets,
};

use moat_common::dns::{self, DnsNamespace, DnsZone, NamespaceKey};

use super::KernelError;
use crate::compiler::{Delta, Desired};

const PENDING: Endpoint = Endpoint::PENDING;

pub struct KernelMaps {
    local: HashMap<MapData, u64, Endpoint>,
    local_addresses: HashMap<MapData, [u8; 16], u64>,
    pod_addresses: HashMap<MapData, PodAddress, u8>,
    remote: HashMap<MapData, [u8; 16], Endpoint>,
    networks: LpmTrie<MapData, [u8; 16], Endpoint>,
    shared_ports: HashMap<MapData, SharedPortKey, u8>,
    tenant_pairs: HashMap<MapData, TenantPairKey, u8>,
    policy_rules: LpmTrie<MapData, PolicyMatch, u8>,
    cluster_subjects: HashMap<MapData, u64, TierSets>,
    cluster_rules: LpmTrie<MapData, PolicyMatch, TierMatch>,
    settings: Array<MapData, Settings>,
    dns_namespaces: HashMap<MapData, NamespaceKey, DnsNamespace>,
    dns_services: HashMap<MapData, [u8; 16], NamespaceKey>,
    dns_zones: Array<MapData, DnsZone>,
    events_lost: PerCpuArray<MapData, u64>,
}

/// What one apply wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub writes: usize,
    pub removals: usize,
    pub generation: u64,
}

pub(crate) fn take<T: TryFrom<aya::maps::Map>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError>
where
    T::Error: std::fmt::Display,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| KernelError::map(name, "missing from the object"))?;
    T::try_from(map).map_err(|e| KernelError::map(name, e))
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            local: take(ebpf, names::LOCAL_ENDPOINTS)?,
            local_addresses: take(ebpf, names::LOCAL_ADDRESSES)?,
            pod_addresses: take(ebpf, names::POD_ADDRESSES)?,
            remote: take(ebpf, names::REMOTE_ENDPOINTS)?,
            networks: take(ebpf, names::REMOTE_NETWORKS)?,
            shared_ports: take(ebpf, names::SHARED_PORTS)?,
            tenant_pairs: take(ebpf, names::TENANT_PAIRS)?,
            policy_rules: take(ebpf, names::POLICY_RULES)?,
            cluster_subjects: take(ebpf, names::CNP_SUBJECTS)?,
            cluster_rules: take(ebpf, names::CNP_RULES)?,
            settings: take(ebpf, names::SETTINGS)?,
            dns_namespaces: take(ebpf, dns::names::DNS_NAMESPACES)?,
            dns_services: take(ebpf, dns::names::DNS_SERVICES)?,
            dns_zones: take(ebpf, dns::names::DNS_ZONES)?,
            events_lost: take(ebpf, names::EVENTS_LOST)?,
        })
    }

    pub fn settings(&self) -> Result<Settings, KernelError> {
        self.settings
            .get(&0, 0)
            .map_err(|e| KernelError::map(names::SETTINGS, e))
    }

    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let values = self
            .events_lost
            .get(&0, 0)
            .map_err(|e| KernelError::map(names::EVENTS_LOST, e))?;
        Ok(values.iter().sum())
    }

    /// What the maps hold now (an earlier agent's state after a restart). No index.
    pub fn read(&self) -> Result<Desired, KernelError> {
        let settings = self.settings()?;
        let mut state = Desired {
            unknown: settings.unknown,
            flags: settings.flags,
            dns: settings.dns,
            ..Desired::default()
        };
        for entry in self.dns_namespaces.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(dns::names::DNS_NAMESPACES, e))?;
            state.dns_namespaces.insert(key, value);
        }
        for entry in self.dns_services.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(dns::names::DNS_SERVICES, e))?;
            state.dns_services.insert(key, value);
        }
        for slot in 0..dns::ZONE_SLOTS {
            let zone = self.dns_zones.get(&slot, 0).map_err(|e| KernelError::map(dns::names::DNS_ZONES, e))?;
            if zone.len != 0 {
                state.dns_zones.insert(slot, zone);
            }
        }
        for entry in self.local.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::LOCAL_ENDPOINTS, e))?;
            state.local.insert(key, value);
        }
        for entry in self.local_addresses.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::LOCAL_ADDRESSES, e))?;
            state.local_addresses.insert(key, value);
        }
        for key in self.pod_addresses.keys() {
            state
                .pod_addresses
                .insert(key.map_err(|e| KernelError::map(names::POD_ADDRESSES, e))?);
        }
        for entry in self.remote.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::REMOTE_ENDPOINTS, e))?;
            state.remote.insert(key, value);
        }
        for entry in self.networks.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::REMOTE_NETWORKS, e))?;
            state.networks.insert(
                NetworkKey {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                },
                value,
            );
        }
        for key in self.shared_ports.keys() {
            state
                .shared_ports
                .insert(key.map_err(|e| KernelError::map(names::SHARED_PORTS, e))?);
        }
        for key in self.tenant_pairs.keys() {
            state
                .tenant_pairs
                .insert(key.map_err(|e| KernelError::map(names::TENANT_PAIRS, e))?);
        }
        for key in self.policy_rules.keys() {
            let key = key.map_err(|e| KernelError::map(names::POLICY_RULES, e))?;
            state
                .policy_rules
                .insert((key.prefix_len(), key.data()), Default::default());
        }
        for entry in self.cluster_subjects.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::CNP_SUBJECTS, e))?;
            state.cluster_subjects.insert(key, value);
        }
        for entry in self.cluster_rules.iter() {
            let (key, value) = entry.map_err(|e| KernelError::map(names::CNP_RULES, e))?;
            state.cluster_rules.insert((key.prefix_len(), key.data()), value);
        }
        Ok(state)
    }

    /// Moves the maps from `from` (what they hold) to `to`, then arms the new state.
    pub fn apply(&mut self, from: &Desired, to: &Desired) -> Result<ApplyStats, KernelError> {
        self.apply_delta(&Delta::between(from, to), to)
    }

    /// Writes `delta` (what changed on the way to `to`), then arms the new state.
    pub fn apply_delta(&mut self, delta: &Delta, to: &Desired) -> Result<ApplyStats, KernelError> {
        let Delta {
            local,
            local_addresses: addresses,
            pod_addresses,
            remote,
            networks,
            shared_ports: shared,
            tenant_pairs: pairs,
            policy_rules: rules,
            cluster_subjects: subjects,
            cluster_rules: tiers,
            dns_namespaces,
            dns_services,
            dns_zones,
        } = delta;
        let mut stats = ApplyStats::default();

        // 1. Endpoints that change become pending first.
        for (key, _) in &local.changed {
            self.put_local(*key, PENDING, &mut stats)?;
        }
        for (key, _) in &remote.changed {
            self.put_remote(*key, PENDING, &mut stats)?;
        }
        for (key, _) in &networks.changed {
            self.put_network(key, PENDING, &mut stats)?;
        }
        // 2. New and final values; exceptions before the endpoints that rely on them.
        for (key, ()) in &shared.added {
            self.shared_ports
                .insert(key, 1, 0)
                .map_err(|e| KernelError::map(names::SHARED_PORTS, e))?;
            stats.writes += 1;
        }
        for (key, ()) in &pairs.added {
            self.tenant_pairs
                .insert(key, 1, 0)
                .map_err(|e| KernelError::map(names::TENANT_PAIRS, e))?;
            stats.writes += 1;
        }
        for ((prefix_len, data), ()) in &rules.added {
            self.policy_rules
                .insert(&Key::new(*prefix_len, *data), 1, 0)
                .map_err(|e| KernelError::map(names::POLICY_RULES, e))?;
            stats.writes += 1;
        }
        // A tier set's entries before the pods that use it. Every change to a policy changes
        // the id of the sets holding it, so a pod moves from one complete set to another.
        for ((prefix_len, data), value) in tiers.added.iter().chain(&tiers.changed) {
            self.cluster_rules
                .insert(&Key::new(*prefix_len, *data), value, 0)
                .map_err(|e| KernelError::map(names::CNP_RULES, e))?;
            stats.writes += 1;
        }
        for (cgroup, sets) in subjects.added.iter().chain(&subjects.changed) {
            self.cluster_subjects
                .insert(cgroup, sets, 0)
                .map_err(|e| KernelError::map(names::CNP_SUBJECTS, e))?;
            stats.writes += 1;
        }
        for (key, value) in local.added.iter().chain(&local.changed) {
            self.put_local(*key, *value, &mut stats)?;
        }
        // Addresses only name pods in events, or let a pod's connect to itself through: no
        // ordering constraint of their own.
        for (key, cgroup) in addresses.added.iter().chain(&addresses.changed) {
            self.local_addresses
                .insert(key, cgroup, 0)
                .map_err(|e| KernelError::map(names::LOCAL_ADDRESSES, e))?;
            stats.writes += 1;
        }
        for (key, ()) in &pod_addresses.added {
            self.pod_addresses
                .insert(key, 1, 0)
                .map_err(|e| KernelError::map(names::POD_ADDRESSES, e))?;
            stats.writes += 1;
        }
        for (key, value) in remote.added.iter().chain(&remote.changed) {
            self.put_remote(*key, *value, &mut stats)?;
        }
        for (key, value) in networks.added.iter().chain(&networks.changed) {
            self.put_network(key, *value, &mut stats)?;
        }
        // Names are decided on their own (no flow depends on them): adds, then removals.
        for (key, value) in dns_namespaces.added.iter().chain(&dns_namespaces.changed) {
            self.dns_namespaces
                .insert(key, value, 0)
                .map_err(|e| KernelError::map(dns::names::DNS_NAMESPACES, e))?;
            stats.writes += 1;
        }
        for (key, value) in dns_services.added.iter().chain(&dns_services.changed) {
            self.dns_services
                .insert(key, value, 0)
                .map_err(|e| KernelError::map(dns::names::DNS_SERVICES, e))?;
            stats.writes += 1;
        }
        let cleared = dns_zones.removed.iter().map(|slot| (*slot, DnsZone::EMPTY));
        for (slot, zone) in dns_zones.added.iter().chain(&dns_zones.changed).copied().chain(cleared) {
            self.dns_zones
                .set(slot, zone, 0)
                .map_err(|e| KernelError::map(dns::names::DNS_ZONES, e))?;
            stats.writes += 1;
        }
        // 3. Removals.
        for key in &local.removed {
            remove_tolerant(self.local.remove(key), names::LOCAL_ENDPOINTS)?;
        }
        for key in &addresses.removed {
            remove_tolerant(self.local_addresses.remove(key), names::LOCAL_ADDRESSES)?;
        }
        for key in &pod_addresses.removed {
            remove_tolerant(self.pod_addresses.remove(key), names::POD_ADDRESSES)?;
        }
        for key in &remote.removed {
            remove_tolerant(self.remote.remove(key), names::REMOTE_ENDPOINTS)?;
        }
        for key in &networks.removed {
            remove_tolerant(
                self.networks.remove(&Key::new(key.prefix_len, key.addr)),
                names::REMOTE_NETWORKS,
            )?;
        }
        for key in &shared.removed {
            remove_tolerant(self.shared_ports.remove(key), names::SHARED_PORTS)?;
        }
        for key in &pairs.removed {
            remove_tolerant(self.tenant_pairs.remove(key), names::TENANT_PAIRS)?;
        }
        for key in &dns_namespaces.removed {
            remove_tolerant(self.dns_namespaces.remove(key), dns::names::DNS_NAMESPACES)?;
        }
        for key in &dns_services.removed {
            remove_tolerant(self.dns_services.remove(key), dns::names::DNS_SERVICES)?;
        }
        for (prefix_len, data) in &rules.removed {
            remove_tolerant(
                self.policy_rules.remove(&Key::new(*prefix_len, *data)),
                names::POLICY_RULES,
            )?;
        }
        for cgroup in &subjects.removed {
            remove_tolerant(self.cluster_subjects.remove(cgroup), names::CNP_SUBJECTS)?;
        }
        for (prefix_len, data) in &tiers.removed {
            remove_tolerant(self.cluster_rules.remove(&Key::new(*prefix_len, *data)), names::CNP_RULES)?;
        }
        stats.removals = local.removed.len()
            + addresses.removed.len()
            + pod_addresses.removed.len()
            + remote.removed.len()
            + networks.removed.len()
            + shared.removed.len()
            + pairs.removed.len()
            + rules.removed.len()
            + subjects.removed.len()
            + tiers.removed.len()
            + dns_namespaces.removed.len()
            + dns_services.removed.len();

        // 4. Arm: a new generation makes every live flow be re-decided on its next packet.
        let current = self.settings()?;
        let changed = stats.writes + stats.removals > 0
            || current.unknown != to.unknown
            || current.flags != to.flags
            || current.dns != to.dns
            || current.ready == 0;
        let generation = if changed {
            current.generation + 1
        } else {
            current.generation
        };
        self.settings
            .set(0, to.settings(generation), 0)
            .map_err(|e| KernelError::map(names::SETTINGS, e))?;
        stats.generation = generation;
        Ok(stats)
    }

    fn put_local(
        &mut self,
        key: u64,
        value: Endpoint,
        stats: &mut ApplyStats,
    ) -> Result<(), KernelError> {
        self.local
            .insert(key, value, 0)
            .map_err(|e| KernelError::map(names::LOCAL_ENDPOINTS, e))?;
        stats.writes += 1;
        Ok(())
    }

    fn put_remote(
        &mut self,
        key: [u8; 16],
        value: Endpoint,
        stats: &mut ApplyStats,
    ) -> Result<(), KernelError> {
        self.remote
            .insert(key, value, 0)
            .map_err(|e| KernelError::map(names::REMOTE_ENDPOINTS, e))?;
        stats.writes += 1;
        Ok(())
    }

    fn put_network(
        &mut self,
        key: &NetworkKey,
        value: Endpoint,
        stats: &mut ApplyStats,
    ) -> Result<(), KernelError> {
        self.networks
            .insert(&Key::new(key.prefix_len, key.addr), value, 0)
            .map_err(|e| KernelError::map(names::REMOTE_NETWORKS, e))?;
        stats.writes += 1;
        Ok(())
    }
}

/// A key already gone (removed by hand, or by an apply that failed midway) is not an error.
fn remove_tolerant(
    result: Result<(), aya::maps::MapError>,
    map: &'static str,
) -> Result<(), KernelError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(error) => Err(KernelError::map(map, error)),
    }
}
