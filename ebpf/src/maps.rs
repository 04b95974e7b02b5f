//! The pinned maps. Names must match `moat_common::maps::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use moat_common::maps::{
    capacity, Counter, CounterKey, Endpoint, FlowKey, FlowState, PolicyMatch, Settings,
    SharedPortKey, TenantPairKey,
};

#[map]
pub static LOCAL_ENDPOINTS: HashMap<u64, Endpoint> =
    HashMap::pinned(capacity::LOCAL_ENDPOINTS, 0);

#[map]
pub static REMOTE_ENDPOINTS: HashMap<[u8; 16], Endpoint> =
    HashMap::pinned(capacity::REMOTE_ENDPOINTS, 0);

#[map]
pub static REMOTE_NETWORKS: LpmTrie<[u8; 16], Endpoint> =
    LpmTrie::pinned(capacity::REMOTE_NETWORKS, 0);

#[map]
pub static SHARED_PORTS: HashMap<SharedPortKey, u8> = HashMap::pinned(capacity::SHARED_PORTS, 0);

#[map]
pub static TENANT_PAIRS: HashMap<TenantPairKey, u8> = HashMap::pinned(capacity::TENANT_PAIRS, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(capacity::FLOWS, 0);

#[map]
pub static COUNTERS: LruPerCpuHashMap<CounterKey, Counter> =
    LruPerCpuHashMap::pinned(capacity::COUNTERS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// Index 0: events the ring buffer had no room for.
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// NetworkPolicy rules: (policy set, peer identity, protocol, port prefix) → allowed.
#[map]
pub static POLICY_RULES: LpmTrie<PolicyMatch, u8> = LpmTrie::pinned(capacity::POLICY_RULES, 0);

/// Runtime guard: detection code → `GUARD_MODE_*` (0 off until the agent writes it).
#[map]
pub static GUARD_MODES: Array<u32> = Array::pinned(moat_common::event::DETECTION_SLOTS, 0);
