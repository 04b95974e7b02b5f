//! The pinned maps. Names must match `moat_common::maps::names`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use moat_common::budget::{BudgetKey, BudgetState, EVENT_BUDGETS_CAPACITY};
use moat_common::guard::{
    capacity as guard_capacity, Actor, DeviceRule, Endpoint as GuardEndpoint, FileKey, FileRule, GuardSettings,
    SetnsEntry, SocketPath, UnixRefusal,
};
use moat_common::dns::{
    DnsNamespace, DnsScratch, DnsZone, NamespaceKey, SocketKey, DNS_NAMESPACES_CAPACITY, DNS_SERVICES_CAPACITY, DNS_SOCKETS_CAPACITY,
    ZONE_SLOTS,
};
use moat_common::flow_table::FlowSlot;
use moat_common::maps::{
    capacity, Counter, CounterKey, STAGE_SLOTS, Endpoint, PodAddress, PolicyMatch, Settings,
    SharedPortKey, SlotCounter, TenantPairKey, TierMatch, TierSets,
};

/// The packet programs' later stages, tail-called by slot (`STAGE_*`): the decider for every
/// packet an established flow does not answer, and (egress) the DNS check for every question.
/// Each is verified apart, so no program nears the verifier's instruction limit. One array per
/// direction: the kernel ties an array to one attach type. Pinned, so the entries outlive the
/// agent that wrote them, as the programs' links do (`loader::arm_stages`).
#[map]
pub static EGRESS_STAGES: ProgramArray = ProgramArray::pinned(STAGE_SLOTS, 0);

#[map]
pub static INGRESS_STAGES: ProgramArray = ProgramArray::pinned(STAGE_SLOTS, 0);

#[map]
pub static LOCAL_ENDPOINTS: HashMap<u64, Endpoint> =
    HashMap::pinned(capacity::LOCAL_ENDPOINTS, 0);

/// Read by a connect or sendmsg of an unbound socket that no cached verdict answers (is it to
/// the pod itself?): allocated as entries arrive, not preallocated at full capacity.
#[map]
pub static POD_ADDRESSES: HashMap<PodAddress, u8> =
    HashMap::pinned(capacity::POD_ADDRESSES, BPF_F_NO_PREALLOC);

#[map]
pub static REMOTE_ENDPOINTS: HashMap<[u8; 16], Endpoint> =
    HashMap::pinned(capacity::REMOTE_ENDPOINTS, 0);

/// Keyed by the address as words (`packet::Addr`): the same 16 bytes as the agent's `[u8; 16]`.
#[map]
pub static REMOTE_NETWORKS: LpmTrie<[u32; 4], Endpoint> =
    LpmTrie::pinned(capacity::REMOTE_NETWORKS, 0);

#[map]
pub static SHARED_PORTS: HashMap<SharedPortKey, u8> = HashMap::pinned(capacity::SHARED_PORTS, 0);

#[map]
pub static TENANT_PAIRS: HashMap<TenantPairKey, u8> = HashMap::pinned(capacity::TENANT_PAIRS, 0);

/// DNS isolation: namespace name → tenant (`moat_common::dns`).
#[map]
pub static DNS_NAMESPACES: HashMap<NamespaceKey, DnsNamespace> =
    HashMap::pinned(DNS_NAMESPACES_CAPACITY, 0);

/// DNS isolation: Service ClusterIP → its namespace (looked up in `DNS_NAMESPACES`, so a
/// relabelled namespace moves its Services with it).
#[map]
pub static DNS_SERVICES: HashMap<[u8; 16], NamespaceKey> = HashMap::pinned(DNS_SERVICES_CAPACITY, 0);

/// DNS isolation: the cluster zones, longest first.
#[map]
pub static DNS_ZONES: Array<DnsZone> = Array::pinned(ZONE_SLOTS, 0);

/// DNS isolation: one question at a time per CPU (too big for the stack).
#[map]
pub static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

/// DNS isolation over TCP: pods' connections to port 53 (`SocketKey` → socket), where
/// `moat_dns_msg` sees what they send. Not pinned: the sock_ops program's link keeps it, and
/// a closed socket leaves it by itself.
#[map]
pub static DNS_SOCKETS: SockHash<SocketKey> = SockHash::with_max_entries(DNS_SOCKETS_CAPACITY, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// The flow table (`flows.rs`): `capacity::FLOWS` slots in sets of `flow_table::WAYS`.
/// Mmapable, so the agent counts live slots by reading the pages rather than by one
/// system call per slot, and so the array's values start on a page: each slot is one cache line.
#[map]
pub static FLOWS: Array<FlowSlot> = Array::pinned(capacity::FLOWS, BPF_F_MMAPABLE);

#[map]
pub static COUNTERS: LruPerCpuHashMap<CounterKey, Counter> =
    LruPerCpuHashMap::pinned(capacity::COUNTERS, 0);

/// Verdict counters per CPU, in slots: established packets by tenant and direction, other
/// verdicts by their key (`counters.rs`).
#[map]
pub static COUNTER_SLOTS: PerCpuArray<SlotCounter> =
    PerCpuArray::pinned(capacity::COUNTER_SLOTS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// Index 0: events the ring buffer had no room for.
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// NetworkPolicy rules: (policy set, peer identity, protocol, port prefix) → allowed.
#[map]
pub static POLICY_RULES: LpmTrie<PolicyMatch, u8> = LpmTrie::pinned(capacity::POLICY_RULES, 0);

/// ClusterNetworkPolicy: a local pod's tier sets, by cgroup (read only while
/// `SETTING_CLUSTER_POLICIES` is set).
#[map]
pub static CNP_SUBJECTS: HashMap<u64, TierSets> = HashMap::pinned(capacity::CNP_SUBJECTS, 0);

/// ClusterNetworkPolicy entries, keyed like `POLICY_RULES`: per tier, the first rule of the
/// tier set matching the prefix.
#[map]
pub static CNP_RULES: LpmTrie<PolicyMatch, TierMatch> = LpmTrie::pinned(capacity::CNP_RULES, 0);

/// Runtime guard: detection code → `GUARD_MODE_*` (0 off until the agent writes it).
#[map]
pub static GUARD_MODES: Array<u32> = Array::pinned(moat_common::event::DETECTION_SLOTS, 0);

/// Runtime guard settings (`GuardSettings`), written by the agent.
#[map]
pub static GUARD_SETTINGS: Array<GuardSettings> = Array::pinned(1, 0);

/// cgroup id → the pod it belongs to.
#[map]
pub static GUARD_ACTORS: HashMap<u64, Actor> = HashMap::pinned(guard_capacity::GUARD_ACTORS, 0);

/// Protected files by (dev, inode): kubelet credentials, runtime binaries and sockets.
#[map]
pub static GUARD_FILES: HashMap<FileKey, FileRule> = HashMap::pinned(guard_capacity::GUARD_FILES, 0);

/// Superblocks that hold protected files or are a pod's own volume (`s_dev` → `DeviceRule`):
/// looked up first, so an open on any other filesystem ends after one lookup.
#[map]
pub static GUARD_DEVICES: HashMap<u64, DeviceRule> = HashMap::pinned(guard_capacity::GUARD_DEVICES, 0);

/// Processes that opened kubelet credentials (tgid → when), and their children.
#[map]
pub static GUARD_TAINTED: LruHashMap<u32, u64> = LruHashMap::pinned(guard_capacity::GUARD_TAINTED, 0);

/// Pods' threads inside setns (pid_tgid) → their namespaces before it and its arguments.
#[map]
pub static GUARD_SETNS: LruHashMap<u64, SetnsEntry> = LruHashMap::pinned(guard_capacity::GUARD_SETNS, 0);

/// Threads (pid_tgid) → the block device check cgroup/dev last reported in detect mode:
/// `[device, access type, when]`, so the kernel's second check of one open is not reported.
#[map]
pub static GUARD_DEVICE_SEEN: LruHashMap<u64, [u64; 3]> = LruHashMap::pinned(guard_capacity::GUARD_DEVICE_SEEN, 0);

/// API server endpoints a tainted process must not reach.
#[map]
pub static GUARD_API_SERVERS: HashMap<GuardEndpoint, u8> =
    HashMap::pinned(guard_capacity::GUARD_API_SERVERS, 0);

/// Kubelet API ports pods must not connect to (port in host order → 1).
#[map]
pub static GUARD_PORTS: HashMap<u16, u8> = HashMap::pinned(guard_capacity::GUARD_PORTS, 0);

/// (pod, path) → the runtime socket that path reaches in that pod (cgroup/connect_unix).
#[map]
pub static GUARD_SOCKET_PATHS: HashMap<SocketPath, FileKey> = HashMap::pinned(guard_capacity::GUARD_SOCKET_PATHS, 0);

/// Threads (pid_tgid) whose connect cgroup/connect_unix refused, until their connect's exit
/// reports it.
#[map]
pub static GUARD_UNIX_REFUSED: LruHashMap<u64, UnixRefusal> =
    LruHashMap::pinned(guard_capacity::GUARD_UNIX_REFUSED, 0);

/// Event budgets (`moat_common::budget`): each local tenant's deny events, per CPU.
#[map]
pub static FLOW_BUDGETS: LruPerCpuHashMap<u64, BudgetState> =
    LruPerCpuHashMap::pinned(EVENT_BUDGETS_CAPACITY, 0);

/// Each local tenant's allowed-flow events, per CPU.
#[map]
pub static ALLOW_BUDGETS: LruPerCpuHashMap<u64, BudgetState> =
    LruPerCpuHashMap::pinned(EVENT_BUDGETS_CAPACITY, 0);

/// Each pod's detections, per detection and CPU.
#[map]
pub static DETECTION_BUDGETS: LruPerCpuHashMap<BudgetKey, BudgetState> =
    LruPerCpuHashMap::pinned(EVENT_BUDGETS_CAPACITY, 0);
