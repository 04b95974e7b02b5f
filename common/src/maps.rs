//! Keys and values of the pinned maps. Addresses are 16 bytes in network order; IPv4 is
//! stored IPv4-mapped (`::ffff:a.b.c.d`) so one map serves both families.

/// Map names, shared so the agent never spells them differently from the programs.
pub mod names {
    pub const LOCAL_ENDPOINTS: &str = "LOCAL_ENDPOINTS";
    pub const REMOTE_ENDPOINTS: &str = "REMOTE_ENDPOINTS";
    pub const REMOTE_NETWORKS: &str = "REMOTE_NETWORKS";
    pub const SHARED_PORTS: &str = "SHARED_PORTS";
    pub const TENANT_PAIRS: &str = "TENANT_PAIRS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU verdict counters in slots: established packets by tenant slot
    /// (`counter_slot`), every other verdict by its key's hash (`decision_slot`).
    pub const COUNTER_SLOTS: &str = "COUNTER_SLOTS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    pub const POLICY_RULES: &str = "POLICY_RULES";
    /// Runtime guard: detection code → `event::GUARD_MODE_*`, written by the agent.
    pub const GUARD_MODES: &str = "GUARD_MODES";
    /// Address of a pod on this node → one of its cgroup ids: names the pod in the events of
    /// the tc program, which sees no socket.
    pub const LOCAL_ADDRESSES: &str = "LOCAL_ADDRESSES";
    /// Every cgroup of a pod on this node with each of the pod's addresses (`PodAddress`):
    /// an unbound socket's connect to one of them is the pod's to itself.
    pub const POD_ADDRESSES: &str = "POD_ADDRESSES";
    /// ClusterNetworkPolicy: cgroup of a pod on this node → its `TierSets`.
    pub const CNP_SUBJECTS: &str = "CNP_SUBJECTS";
    /// ClusterNetworkPolicy entries: `PolicyMatch` prefix → `TierMatch`.
    pub const CNP_RULES: &str = "CNP_RULES";
    /// The packet programs' later stages, by slot (`STAGE_*`).
    pub const EGRESS_STAGES: &str = "EGRESS_STAGES";
    pub const INGRESS_STAGES: &str = "INGRESS_STAGES";
}

/// Slots of `EGRESS_STAGES` / `INGRESS_STAGES`: the decider, for every packet an established
/// flow does not answer.
pub const STAGE_DECIDE: u32 = 0;
/// Egress only: the tenant DNS check, for every UDP packet to port 53 (and any whose headers
/// only the full parse reads).
pub const STAGE_DNS: u32 = 1;
pub const STAGE_SLOTS: u32 = 2;

/// Capacities; the agent refuses a model that would not fit rather than writing part of it.
pub mod capacity {
    pub const LOCAL_ENDPOINTS: u32 = 65_536;
    pub const LOCAL_ADDRESSES: u32 = 65_536;
    /// Cgroups × addresses: room for several containers of every pod, in both families.
    pub const POD_ADDRESSES: u32 = 262_144;
    pub const REMOTE_ENDPOINTS: u32 = 262_144;
    pub const REMOTE_NETWORKS: u32 = 16_384;
    pub const SHARED_PORTS: u32 = 16_384;
    pub const TENANT_PAIRS: u32 = 16_384;
    pub const FLOWS: u32 = 262_144;
    pub const COUNTERS: u32 = 16_384;
    /// Tenant slots of `COUNTER_SLOTS` for established packets (one entry per direction).
    pub const TENANT_SLOTS: u32 = 1_024;
    /// Slots of `COUNTER_SLOTS` for the other verdicts, after the tenant slots.
    pub const DECISION_SLOTS: u32 = 2_048;
    /// Entries of `COUNTER_SLOTS` (32 bytes each, per CPU).
    pub const COUNTER_SLOTS: u32 = 2 * TENANT_SLOTS + DECISION_SLOTS;
    pub const EVENTS_BYTES: u32 = 1 << 22;
    pub const POLICY_RULES: u32 = 1 << 20;
    pub const CNP_SUBJECTS: u32 = 65_536;
    pub const CNP_RULES: u32 = 1 << 20;
}

/// Endpoint is known by IP but its pod is not yet attributable (cluster CIDR, no pod yet).
pub const ENDPOINT_PENDING: u32 = 1;
/// Not a pod: an address range named only by NetworkPolicy ipBlocks. Follows the
/// unknown-endpoint rule, but carries a CIDR identity for policy matching.
pub const ENDPOINT_EXTERNAL: u32 = 2;
/// A pod of another tenant on a node reserved for one tenant (`node.foreign-tenant` in block
/// mode): every flow to or from it is denied, before anything else is considered.
pub const ENDPOINT_FOREIGN: u32 = 4;
/// A hostNetwork pod (local entries only): its loopback is the node's, shared with the host
/// and every other hostNetwork pod, so loopback traffic is not the pod's own.
pub const ENDPOINT_HOST_NETWORK: u32 = 8;

/// Policy-set id of an endpoint no NetworkPolicy isolates (in that direction).
pub const NOT_ISOLATED: u64 = 0;
/// Identity that stands for every peer (a rule without `from`/`to`).
pub const IDENTITY_ANY: u64 = u64::MAX;

/// What the datapath knows about one end of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Stable 64-bit id of the tenant (see the agent's `model::TenantId`); 0 is never a tenant.
    pub tenant: u64,
    /// Peer identity for NetworkPolicy: a pod's (namespace, labels, named ports), or an
    /// address range's. 0: none.
    pub identity: u64,
    /// Policy set isolating this pod's ingress, `NOT_ISOLATED` if none.
    pub ingress_policy: u64,
    /// Policy set isolating this pod's egress, `NOT_ISOLATED` if none.
    pub egress_policy: u64,
    /// Shared-service id this endpoint belongs to, 0 for none.
    pub shared: u32,
    /// `ENDPOINT_*` flags.
    pub flags: u32,
}

impl Endpoint {
    pub const EMPTY: Self = Self {
        tenant: 0,
        identity: 0,
        ingress_policy: NOT_ISOLATED,
        egress_policy: NOT_ISOLATED,
        shared: 0,
        flags: 0,
    };
    pub const PENDING: Self = Self { flags: ENDPOINT_PENDING, ..Self::EMPTY };

    pub const fn is_pending(&self) -> bool {
        self.flags & ENDPOINT_PENDING != 0
    }

    pub const fn is_external(&self) -> bool {
        self.flags & ENDPOINT_EXTERNAL != 0
    }

    pub const fn is_foreign(&self) -> bool {
        self.flags & ENDPOINT_FOREIGN != 0
    }

    pub const fn is_host_network(&self) -> bool {
        self.flags & ENDPOINT_HOST_NETWORK != 0
    }
}

/// Key of the LPM trie of CIDRs: prefix length first, as the kernel expects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkKey {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// A port of a shared service that every tenant may reach. `protocol == 0 && port == 0`
/// means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedPortKey {
    pub shared: u32,
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// An admin-declared exception: `src` tenant may open flows to `dst` tenant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantPairKey {
    pub src: u64,
    pub dst: u64,
}

pub const UNKNOWN_DENY: u32 = 0;
pub const UNKNOWN_ALLOW: u32 = 1;

/// The data of a `POLICY_RULES` LPM key: a policy set allows `identity` on `protocol` and a
/// port prefix. Matching is on bytes in memory order, so the port is big-endian and last;
/// a prefix covering set and identity only allows every protocol and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMatch {
    pub set: u64,
    pub identity: u64,
    pub protocol: u8,
    pub port: [u8; 2],
    pub _pad: [u8; 5],
}

/// Bits of `PolicyMatch` that can take part in a prefix.
pub const POLICY_SET_IDENTITY_BITS: u32 = 128;
pub const POLICY_FULL_BITS: u32 = 128 + 8 + 16;

impl PolicyMatch {
    pub const fn new(set: u64, identity: u64, protocol: u8, port: u16) -> Self {
        Self { set, identity, protocol, port: port.to_be_bytes(), _pad: [0; 5] }
    }
}

pub const SETTING_DEFAULT_DENY_IN_TENANT: u32 = 1;
/// Send an event for every newly admitted flow, not only for denials.
pub const SETTING_REPORT_ALLOWED: u32 = 2;
/// Some ClusterNetworkPolicy selects a pod of this node: the datapath reads `CNP_SUBJECTS`.
/// Without it a new flow costs no ClusterNetworkPolicy lookup at all.
pub const SETTING_CLUSTER_POLICIES: u32 = 4;

/// A local pod's ClusterNetworkPolicy *tier sets*: per direction, the id of the ordered rules
/// of the policies whose subject selects it, `NOT_ISOLATED` (0) where none does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TierSets {
    pub ingress: u64,
    pub egress: u64,
}

/// A `CNP_RULES` value: per tier, the first rule of the tier set that matches the entry's
/// peer identity on every port of its prefix, as `position << 2 | TIER_*` action, or
/// `TIER_NO_RULE`. Smaller is earlier, so the first of several matches is their minimum.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierMatch {
    pub admin: u32,
    pub baseline: u32,
}

pub const TIER_ACCEPT: u32 = 0;
pub const TIER_DENY: u32 = 1;
pub const TIER_PASS: u32 = 2;
pub const TIER_NO_RULE: u32 = u32::MAX;

impl TierMatch {
    pub const NONE: Self = Self { admin: TIER_NO_RULE, baseline: TIER_NO_RULE };

    /// The first rule per tier of two matches.
    #[inline(always)]
    pub const fn first(self, other: Self) -> Self {
        Self {
            admin: if other.admin < self.admin { other.admin } else { self.admin },
            baseline: if other.baseline < self.baseline { other.baseline } else { self.baseline },
        }
    }

    /// A rule's encoding: its position in the tier set and its `TIER_*` action.
    pub const fn rule(position: u32, action: u32) -> u32 {
        position << 2 | action
    }

    /// Both tiers in one register (BPF functions return one).
    pub const fn to_bits(self) -> u64 {
        (self.admin as u64) << 32 | self.baseline as u64
    }

    pub const fn from_bits(bits: u64) -> Self {
        Self { admin: (bits >> 32) as u32, baseline: bits as u32 }
    }

    /// The position in the tier set of an encoded rule.
    pub const fn position(encoded: u32) -> u32 {
        encoded >> 2
    }

    /// The `TIER_*` action of an encoded rule (`TIER_NO_RULE` stays itself).
    pub const fn action(encoded: u32) -> u32 {
        if encoded == TIER_NO_RULE { TIER_NO_RULE } else { encoded & 3 }
    }
}

/// Single entry of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Bumped after every change that may revoke flows; flows admitted under an older
    /// generation are re-evaluated on their next packet.
    pub generation: u64,
    /// `UNKNOWN_ALLOW` or `UNKNOWN_DENY`: traffic with endpoints moat does not know.
    pub unknown: u32,
    /// Non-zero once an agent has written a complete state; until then every program allows,
    /// so attaching before the first sync cannot cut a node off.
    pub ready: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// `dns::DNS_OFF`, `DNS_DETECT` or `DNS_BLOCK`.
    pub dns: u32,
}

/// A flow as seen from its local end: keyed by the local socket's cgroup rather than its
/// address, so request and reply map to the same entry in both hook directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub cgroup: u64,
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

pub const ORIGIN_OUTBOUND: u8 = 1;
pub const ORIGIN_INBOUND: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `Settings::generation` the flow was last admitted under.
    pub generation: u64,
    /// Tenant of the local end when admitted, for the counters of established packets.
    pub local_tenant: u64,
    /// `ORIGIN_*`: which side opened the flow, so re-evaluation uses the original direction.
    pub origin: u8,
    pub reason: u8,
    pub _pad: [u8; 2],
    /// When a packet last used the flow, in units of `flow_table::USED_SHIFT` jiffies: which
    /// way of a full set an insert replaces. A hint outside the slot's check, refreshed in
    /// place at most once per unit.
    pub used: u32,
}

/// `POD_ADDRESSES` key: a cgroup of a pod on this node and one of the pod's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddress {
    pub cgroup: u64,
    pub addr: [u8; 16],
}

pub const DIRECTION_INGRESS: u8 = 1;
pub const DIRECTION_EGRESS: u8 = 2;

pub const VERDICT_DENY: u8 = 0;
pub const VERDICT_ALLOW: u8 = 1;

/// Per-tenant packet counters, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub tenant: u64,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    pub _pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One CPU's count for the counter key that last used the slot. Established packets
/// (nearly all of them) are counted in the slot of their tenant id's low bits and direction
/// (`counter_slot`); every other verdict (a new flow, a denial) in the slot of its key's
/// hash (`decision_slot`). A per-CPU array slot is a few instructions where a per-CPU hash
/// update costs ~50 ns per packet. When another key finds the slot, the program first adds
/// what the slot holds to `COUNTERS` under the slot's key, so nothing is lost and the sum
/// of both maps is exact. An untouched slot holds zero packets and counts for nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounter {
    pub key: CounterKey,
    pub packets: u64,
    pub bytes: u64,
}

/// Index in `COUNTER_SLOTS` of `tenant`'s established packets in `direction`
/// (`DIRECTION_*`).
#[inline(always)]
pub const fn counter_slot(tenant: u64, direction: u8) -> u32 {
    ((tenant as u32) & (capacity::TENANT_SLOTS - 1)) * 2 + (direction as u32 & 1)
}

/// Index in `COUNTER_SLOTS` of a verdict other than `Established` (after the tenant slots):
/// a multiplicative hash of the key, so a tenant's few reasons and directions spread over
/// the slots.
#[inline(always)]
pub const fn decision_slot(key: &CounterKey) -> u32 {
    let mixed = key.tenant.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((key.reason as u64) << 1 | (key.direction as u64 & 1)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    2 * capacity::TENANT_SLOTS + ((mixed >> 32) as u32 & (capacity::DECISION_SLOTS - 1))
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all are repr(C), contain only integers and arrays of integers, and have no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for NetworkKey {}
    unsafe impl aya::Pod for SharedPortKey {}
    unsafe impl aya::Pod for TenantPairKey {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for SlotCounter {}
    unsafe impl aya::Pod for PolicyMatch {}
    unsafe impl aya::Pod for TierSets {}
    unsafe impl aya::Pod for TierMatch {}
    unsafe impl aya::Pod for PodAddress {}
}

const _: () = {
    assert!(core::mem::size_of::<Endpoint>() == 40);
    assert!(core::mem::size_of::<PodAddress>() == 24);
    assert!(core::mem::size_of::<NetworkKey>() == 20);
    assert!(core::mem::size_of::<SharedPortKey>() == 8);
    assert!(core::mem::size_of::<TenantPairKey>() == 16);
    assert!(core::mem::size_of::<Settings>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 32);
    assert!(core::mem::size_of::<FlowState>() == 24);
    assert!(core::mem::size_of::<CounterKey>() == 16);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<SlotCounter>() == 32);
    assert!(capacity::DECISION_SLOTS.is_power_of_two());
    assert!(capacity::TENANT_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<PolicyMatch>() == 24);
    assert!(core::mem::size_of::<TierSets>() == 16);
    assert!(core::mem::size_of::<TierMatch>() == 8);
};

/// IPv4 address (network order octets) as the 16-byte IPv4-mapped form used as map key.
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn established_slots_keep_tenant_and_direction_apart_and_stay_in_range() {
        for tenant in [0u64, 1, 1023, 1024, u64::MAX, 0x1234_5678_9abc_def0] {
            for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
                assert!(counter_slot(tenant, direction) < 2 * capacity::TENANT_SLOTS, "{tenant:#x}");
            }
            assert_ne!(counter_slot(tenant, DIRECTION_INGRESS), counter_slot(tenant, DIRECTION_EGRESS));
        }
    }

    #[test]
    fn decision_slots_follow_the_tenant_slots_and_spread_a_clusters_keys() {
        let key = |tenant, direction, reason: u8| CounterKey {
            tenant,
            direction,
            verdict: if reason < 64 { VERDICT_ALLOW } else { VERDICT_DENY },
            reason,
            _pad: [0; 5],
        };
        // 200 tenants (ids as the compiler makes them: hashes), 4 reasons, both directions.
        let mut slots = std::collections::HashSet::new();
        let mut keys = 0;
        for n in 0..200u64 {
            let tenant = n.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5bd1_e995;
            for reason in [1u8, 8, 64, 67] {
                for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
                    let slot = decision_slot(&key(tenant, direction, reason));
                    assert!((2 * capacity::TENANT_SLOTS..capacity::COUNTER_SLOTS).contains(&slot));
                    slots.insert(slot);
                    keys += 1;
                }
            }
        }
        // 1,600 keys in 2,048 slots: a uniform hash fills ~1,120 distinct slots.
        assert!(slots.len() > keys * 6 / 10, "{} slots for {keys} keys", slots.len());
        assert_ne!(decision_slot(&key(5, DIRECTION_INGRESS, 8)), decision_slot(&key(5, DIRECTION_EGRESS, 8)));
    }
}
