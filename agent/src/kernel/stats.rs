//! Read-only views of the pinned maps for metrics and status: per-CPU verdict counters,
//! events lost in the kernel, and how full each map is. Opened from the pins, independently
//! of the handles the agent writes through.

use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use moat_common::maps::{
    capacity, counter_slot_direction, names, Counter, CounterKey, Endpoint, FlowKey, FlowState, SharedPortKey,
    SlotCounter, TenantPairKey, VERDICT_ALLOW,
};
use moat_common::dns::{self, DnsNamespace, NamespaceKey};
use moat_common::verdict::Reason;

use super::KernelError;

/// Entries in one map against its capacity.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

pub struct KernelStats {
    counters: PerCpuHashMap<MapData, CounterKey, Counter>,
    counter_slots: PerCpuArray<MapData, SlotCounter>,
    events_lost: PerCpuArray<MapData, u64>,
    local: HashMap<MapData, u64, Endpoint>,
    remote: HashMap<MapData, [u8; 16], Endpoint>,
    networks: LpmTrie<MapData, [u8; 16], Endpoint>,
    shared_ports: HashMap<MapData, SharedPortKey, u8>,
    tenant_pairs: HashMap<MapData, TenantPairKey, u8>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    dns_namespaces: HashMap<MapData, NamespaceKey, DnsNamespace>,
    dns_services: HashMap<MapData, [u8; 16], NamespaceKey>,
}

fn pinned(dir: &Path, name: &'static str) -> Result<MapData, KernelError> {
    MapData::from_pin(dir.join(name)).map_err(|e| KernelError::map(name, format!("opening pin in {}: {e}", dir.display())))
}

fn typed<T: TryFrom<Map>>(name: &'static str, map: Map) -> Result<T, KernelError>
where
    T::Error: std::fmt::Display,
{
    T::try_from(map).map_err(|e| KernelError::map(name, e))
}

fn add(sum: Counter, counter: &Counter) -> Counter {
    Counter { packets: sum.packets.wrapping_add(counter.packets), bytes: sum.bytes.wrapping_add(counter.bytes) }
}

/// Adds each CPU's slot of established packets in `direction` to its tenant's total.
fn fold_slot<'a>(totals: &mut std::collections::HashMap<CounterKey, Counter>, direction: u8, cpus: impl Iterator<Item = &'a SlotCounter>) {
    for slot in cpus.filter(|slot| slot.packets != 0) {
        let key = CounterKey {
            tenant: slot.tenant,
            direction,
            verdict: VERDICT_ALLOW,
            reason: Reason::Established as u8,
            _pad: [0; 5],
        };
        let total = totals.entry(key).or_default();
        *total = add(*total, &Counter { packets: slot.packets, bytes: slot.bytes });
    }
}

fn count<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> u64 {
    keys.filter(Result::is_ok).count() as u64
}

impl KernelStats {
    /// Opens the maps pinned in `maps_dir` (`<bpffs>/moat/<instance>/v<layout>/maps`).
    pub fn open(maps_dir: &Path) -> Result<Self, KernelError> {
        let open = |name| pinned(maps_dir, name);
        Ok(Self {
            counters: typed(names::COUNTERS, Map::PerCpuLruHashMap(open(names::COUNTERS)?))?,
            counter_slots: typed(names::COUNTER_SLOTS, Map::PerCpuArray(open(names::COUNTER_SLOTS)?))?,
            events_lost: typed(names::EVENTS_LOST, Map::PerCpuArray(open(names::EVENTS_LOST)?))?,
            local: typed(names::LOCAL_ENDPOINTS, Map::HashMap(open(names::LOCAL_ENDPOINTS)?))?,
            remote: typed(names::REMOTE_ENDPOINTS, Map::HashMap(open(names::REMOTE_ENDPOINTS)?))?,
            networks: typed(names::REMOTE_NETWORKS, Map::LpmTrie(open(names::REMOTE_NETWORKS)?))?,
            shared_ports: typed(names::SHARED_PORTS, Map::HashMap(open(names::SHARED_PORTS)?))?,
            tenant_pairs: typed(names::TENANT_PAIRS, Map::HashMap(open(names::TENANT_PAIRS)?))?,
            flows: typed(names::FLOWS, Map::LruHashMap(open(names::FLOWS)?))?,
            dns_namespaces: typed(dns::names::DNS_NAMESPACES, Map::HashMap(open(dns::names::DNS_NAMESPACES)?))?,
            dns_services: typed(dns::names::DNS_SERVICES, Map::HashMap(open(dns::names::DNS_SERVICES)?))?,
        })
    }

    /// Verdict counters summed over CPUs: `COUNTERS`, plus the established packets that
    /// `COUNTER_SLOTS` holds. `COUNTERS` is read first: a program moving a slot's counts
    /// into it meanwhile then makes this reading low (the metrics only ever rise), never
    /// counts them twice.
    pub fn counters(&self) -> Vec<(CounterKey, Counter)> {
        let mut totals: std::collections::HashMap<CounterKey, Counter> = self
            .counters
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| (key, values.iter().fold(Counter::default(), add)))
            .collect();
        let slots = (0..2 * capacity::TENANT_SLOTS).filter_map(|index| Some((index, self.counter_slots.get(&index, 0).ok()?)));
        for (index, values) in slots {
            fold_slot(&mut totals, counter_slot_direction(index), values.iter());
        }
        totals.into_iter().collect()
    }

    /// Events the programs could not put into the full ring buffer, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let values = self.events_lost.get(&0, 0).map_err(|e| KernelError::map(names::EVENTS_LOST, e))?;
        Ok(values.iter().sum())
    }

    /// How full each map is. Walks every key: call it on scrape or every few seconds.
    pub fn fill(&self) -> Vec<Fill> {
        let fill = |map, entries, capacity: u32| Fill { map, entries, capacity: u64::from(capacity) };
        vec![
            fill(names::LOCAL_ENDPOINTS, count(self.local.keys()), capacity::LOCAL_ENDPOINTS),
            fill(names::REMOTE_ENDPOINTS, count(self.remote.keys()), capacity::REMOTE_ENDPOINTS),
            fill(names::REMOTE_NETWORKS, count(self.networks.keys()), capacity::REMOTE_NETWORKS),
            fill(names::SHARED_PORTS, count(self.shared_ports.keys()), capacity::SHARED_PORTS),
            fill(names::TENANT_PAIRS, count(self.tenant_pairs.keys()), capacity::TENANT_PAIRS),
            fill(names::FLOWS, count(self.flows.keys()), capacity::FLOWS),
            fill(names::COUNTERS, count(self.counters.keys()), capacity::COUNTERS),
            fill(dns::names::DNS_NAMESPACES, count(self.dns_namespaces.keys()), dns::DNS_NAMESPACES_CAPACITY),
            fill(dns::names::DNS_SERVICES, count(self.dns_services.keys()), dns::DNS_SERVICES_CAPACITY),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_common::maps::{DIRECTION_EGRESS, DIRECTION_INGRESS};

    #[test]
    fn slots_add_to_the_established_counters_of_their_tenant() {
        let established = |tenant, direction| CounterKey {
            tenant,
            direction,
            verdict: VERDICT_ALLOW,
            reason: Reason::Established as u8,
            _pad: [0; 5],
        };
        let mut totals = std::collections::HashMap::new();
        totals.insert(established(7, DIRECTION_EGRESS), Counter { packets: 10, bytes: 1000 });
        // Two CPUs: one holds tenant 7's packets, the other tenant 9's (the slot changed hands).
        let cpus = [
            SlotCounter { tenant: 7, packets: 3, bytes: 300 },
            SlotCounter { tenant: 9, packets: 2, bytes: 20 },
            SlotCounter { tenant: 5, packets: 0, bytes: 0 },
        ];
        fold_slot(&mut totals, DIRECTION_EGRESS, cpus.iter());
        assert_eq!(totals[&established(7, DIRECTION_EGRESS)], Counter { packets: 13, bytes: 1300 });
        assert_eq!(totals[&established(9, DIRECTION_EGRESS)], Counter { packets: 2, bytes: 20 });
        assert!(!totals.contains_key(&established(5, DIRECTION_EGRESS)), "an empty slot adds nothing");
        assert!(!totals.contains_key(&established(7, DIRECTION_INGRESS)));
    }
}
