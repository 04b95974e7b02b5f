//! Read-only views of the pinned maps for metrics and status: per-CPU verdict counters,
//! events lost in the kernel, and how full each map is. Opened from the pins, independently
//! of the handles the agent writes through.

use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use moat_common::maps::{
    capacity, names, Counter, CounterKey, Endpoint, SharedPortKey,
    SlotCounter, TenantPairKey,
};
use moat_common::dns::{self, DnsNamespace, NamespaceKey};

use super::flow_count::FlowTableView;
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
    flows: FlowTableView,
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

/// Adds what each CPU's copy of one slot holds to the total of the key that holds it.
fn fold_slot<'a>(totals: &mut std::collections::HashMap<CounterKey, Counter>, cpus: impl Iterator<Item = &'a SlotCounter>) {
    for slot in cpus.filter(|slot| slot.packets != 0) {
        let total = totals.entry(slot.key).or_default();
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
            flows: FlowTableView::open(&maps_dir.join(names::FLOWS))?,
            dns_namespaces: typed(dns::names::DNS_NAMESPACES, Map::HashMap(open(dns::names::DNS_NAMESPACES)?))?,
            dns_services: typed(dns::names::DNS_SERVICES, Map::HashMap(open(dns::names::DNS_SERVICES)?))?,
        })
    }

    /// Verdict counters summed over CPUs: `COUNTERS`, plus what the slots of
    /// `COUNTER_SLOTS` hold. `COUNTERS` is read first: a program moving a slot's counts
    /// into it meanwhile then makes this reading low (the metrics only ever rise), never
    /// counts them twice.
    pub fn counters(&self) -> Vec<(CounterKey, Counter)> {
        let mut totals: std::collections::HashMap<CounterKey, Counter> = self
            .counters
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| (key, values.iter().fold(Counter::default(), add)))
            .collect();
        for values in (0..capacity::COUNTER_SLOTS).filter_map(|index| self.counter_slots.get(&index, 0).ok()) {
            fold_slot(&mut totals, values.iter());
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
            Fill { map: names::FLOWS, entries: self.flows.live(), capacity: self.flows.capacity() },
            fill(names::COUNTERS, count(self.counters.keys()), capacity::COUNTERS),
            fill(dns::names::DNS_NAMESPACES, count(self.dns_namespaces.keys()), dns::DNS_NAMESPACES_CAPACITY),
            fill(dns::names::DNS_SERVICES, count(self.dns_services.keys()), dns::DNS_SERVICES_CAPACITY),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_common::maps::{DIRECTION_EGRESS, DIRECTION_INGRESS, VERDICT_ALLOW};
    use moat_common::verdict::Reason;

    #[test]
    fn slots_add_to_the_counters_of_the_key_that_holds_them() {
        let key = |tenant, direction, reason: Reason| CounterKey {
            tenant,
            direction,
            verdict: if reason.is_allow() { VERDICT_ALLOW } else { moat_common::maps::VERDICT_DENY },
            reason: reason as u8,
            _pad: [0; 5],
        };
        let established = key(7, DIRECTION_EGRESS, Reason::Established);
        let denied = key(9, DIRECTION_INGRESS, Reason::PolicyIngressDenied);
        let mut totals = std::collections::HashMap::new();
        totals.insert(established, Counter { packets: 10, bytes: 1000 });
        // Three CPUs: one holds tenant 7's packets, one tenant 9's denials (the slot changed
        // hands on that CPU), one nothing.
        let cpus = [
            SlotCounter { key: established, packets: 3, bytes: 300 },
            SlotCounter { key: denied, packets: 2, bytes: 20 },
            SlotCounter::default(),
        ];
        fold_slot(&mut totals, cpus.iter());
        assert_eq!(totals[&established], Counter { packets: 13, bytes: 1300 });
        assert_eq!(totals[&denied], Counter { packets: 2, bytes: 20 });
        assert_eq!(totals.len(), 2, "an empty slot adds nothing: {totals:?}");
        assert!(!totals.contains_key(&key(7, DIRECTION_INGRESS, Reason::Established)));
    }
}
