//! Read-only views of the pinned maps for metrics and status: per-CPU verdict counters,
//! events lost in the kernel, and how full each map is. Opened from the pins, independently
//! of the handles the agent writes through.

use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use moat_common::maps::{capacity, names, Counter, CounterKey, Endpoint, FlowKey, FlowState, SharedPortKey, TenantPairKey};

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
    events_lost: PerCpuArray<MapData, u64>,
    local: HashMap<MapData, u64, Endpoint>,
    remote: HashMap<MapData, [u8; 16], Endpoint>,
    networks: LpmTrie<MapData, [u8; 16], Endpoint>,
    shared_ports: HashMap<MapData, SharedPortKey, u8>,
    tenant_pairs: HashMap<MapData, TenantPairKey, u8>,
    flows: HashMap<MapData, FlowKey, FlowState>,
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

fn count<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> u64 {
    keys.filter(Result::is_ok).count() as u64
}

impl KernelStats {
    /// Opens the maps pinned in `maps_dir` (`<bpffs>/moat/<instance>/v<layout>/maps`).
    pub fn open(maps_dir: &Path) -> Result<Self, KernelError> {
        let open = |name| pinned(maps_dir, name);
        Ok(Self {
            counters: typed(names::COUNTERS, Map::PerCpuLruHashMap(open(names::COUNTERS)?))?,
            events_lost: typed(names::EVENTS_LOST, Map::PerCpuArray(open(names::EVENTS_LOST)?))?,
            local: typed(names::LOCAL_ENDPOINTS, Map::HashMap(open(names::LOCAL_ENDPOINTS)?))?,
            remote: typed(names::REMOTE_ENDPOINTS, Map::HashMap(open(names::REMOTE_ENDPOINTS)?))?,
            networks: typed(names::REMOTE_NETWORKS, Map::LpmTrie(open(names::REMOTE_NETWORKS)?))?,
            shared_ports: typed(names::SHARED_PORTS, Map::HashMap(open(names::SHARED_PORTS)?))?,
            tenant_pairs: typed(names::TENANT_PAIRS, Map::HashMap(open(names::TENANT_PAIRS)?))?,
            flows: typed(names::FLOWS, Map::LruHashMap(open(names::FLOWS)?))?,
        })
    }

    /// Verdict counters summed over CPUs.
    pub fn counters(&self) -> Vec<(CounterKey, Counter)> {
        self.counters
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| {
                let total = values.iter().fold(Counter::default(), |sum, c| Counter {
                    packets: sum.packets.wrapping_add(c.packets),
                    bytes: sum.bytes.wrapping_add(c.bytes),
                });
                (key, total)
            })
            .collect()
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
        ]
    }
}
