//! The tenant floor over the kernel maps: the verdict for a flow's `Ends`, and its events.

use core::{mem::offset_of, ptr::addr_of_mut};

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use moat_common::{
    event::{FlowEvent, EVENT_KIND_ALLOW, EVENT_KIND_DENY},
    maps::{
        PolicyMatch, Settings, SharedPortKey, TenantPairKey, TierMatch, IDENTITY_ANY, NOT_ISOLATED, ORIGIN_INBOUND,
        ORIGIN_OUTBOUND, POLICY_FULL_BITS, DIRECTION_EGRESS,
    },
    verdict::{decide_flow, ClusterRules, Exceptions, LocalEnd, Peer, PolicyRules, Reason},
};

use crate::budget;
use crate::ends::{cluster_policies, Ends};
use crate::packet::Addr;
use crate::maps::{CNP_RULES, CNP_SUBJECTS, POLICY_RULES, SETTINGS, SHARED_PORTS, TENANT_PAIRS};

struct KernelExceptions;

impl Exceptions for KernelExceptions {
    #[inline(always)]
    fn shared_port(&self, key: &SharedPortKey) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { SHARED_PORTS.get(key).is_some() }
    }

    #[inline(always)]
    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        // SAFETY: as above.
        unsafe { TENANT_PAIRS.get(key).is_some() }
    }
}

impl PolicyRules for KernelExceptions {
    #[inline(always)]
    fn covers(&self, key: &PolicyMatch) -> bool {
        POLICY_RULES.get(RuleKey::of(key).as_key()).is_some()
    }
}

impl ClusterRules for KernelExceptions {
    #[inline(always)]
    fn first_rules(&self, key: &PolicyMatch) -> TierMatch {
        match CNP_RULES.get(RuleKey::of(key).as_key()) {
            Some(found) => *found,
            None => TierMatch::NONE,
        }
    }

    #[inline(always)]
    fn first_for_peer(&self, set: u64, peer: &Peer, protocol: u8, port: u16) -> TierMatch {
        let protocol_port = u32::from(protocol) << 16 | u32::from(port);
        TierMatch::from_bits(first_cluster_rules(set, peer.endpoint.identity, peer.cidr_identity, protocol_port))
    }
}

/// `verdict::first_cluster_rules` with one key, rewritten for each identity: the packet
/// programs' stack has little room (6.1 allows 512 bytes). Inline, like everything the
/// datapath programs call: a BPF call costs 6.1's verifier its pruning (see `RuleKey`).
#[inline(always)]
fn first_cluster_rules(set: u64, identity: u64, cidr_identity: u64, protocol_port: u32) -> u64 {
    let mut key = RuleKey::new(set, IDENTITY_ANY, protocol_port);
    let mut found = key.lookup(TierMatch::NONE);
    if identity != 0 {
        key.set_identity(identity);
        found = key.lookup(found);
    }
    if cidr_identity != 0 {
        key.set_identity(cidr_identity);
        found = key.lookup(found);
    }
    found.to_bits()
}

/// A full-length `Key<PolicyMatch>` as words, written field by field. Copied into a
/// `Key<PolicyMatch>`, a `PolicyMatch`'s 5 padding bytes are zeroed by a call to `memset`: a
/// BPF call, where Debian's 6.1 verifier gives up tracking which values matter (it marks
/// every one precise) and so prunes far fewer paths. Thirty such calls took its walk of the
/// deciders to 700,000–840,000 instructions.
#[repr(C)]
struct RuleKey([u32; 7]);

const _: () = assert!(core::mem::size_of::<RuleKey>() == core::mem::size_of::<Key<PolicyMatch>>());

impl RuleKey {
    /// The key for `key`'s fields (its padding is not read).
    #[inline(always)]
    fn of(key: &PolicyMatch) -> Self {
        let port = u16::from_be_bytes(key.port);
        Self::new(key.set, key.identity, u32::from(key.protocol) << 16 | u32::from(port))
    }

    /// Words in memory order on little-endian BPF: prefix length, set, identity, then the
    /// protocol byte and the big-endian port, then padding.
    #[inline(always)]
    fn new(set: u64, identity: u64, protocol_port: u32) -> Self {
        let (protocol, port) = (protocol_port >> 16 & 0xff, protocol_port & 0xffff);
        let port_be = (port >> 8) | (port & 0xff) << 8;
        let (set_low, set_high) = (set as u32, (set >> 32) as u32);
        Self([POLICY_FULL_BITS, set_low, set_high, identity as u32, (identity >> 32) as u32, protocol | port_be << 8, 0])
    }

    /// `found` and the entry for this key, whichever rule comes first per tier.
    #[inline(always)]
    fn lookup(&self, found: TierMatch) -> TierMatch {
        match CNP_RULES.get(self.as_key()) {
            Some(entry) => found.first(*entry),
            None => found,
        }
    }

    #[inline(always)]
    fn set_identity(&mut self, identity: u64) {
        self.0[3] = identity as u32;
        self.0[4] = (identity >> 32) as u32;
    }

    #[inline(always)]
    fn as_key(&self) -> &Key<PolicyMatch> {
        // SAFETY: same size, and `Key` is packed (alignment 1); every byte is initialised.
        unsafe { &*(self as *const Self as *const Key<PolicyMatch>) }
    }
}

/// The local pod's tier set for a flow it opened (`outbound`) or accepts. Looked up when
/// deciding rather than kept in `Ends`: the programs' stack has no room to spare on 6.1.
#[inline(always)]
fn cluster_set(cgroup: u64, outbound: bool) -> u64 {
    // SAFETY: the value is read at once.
    match unsafe { CNP_SUBJECTS.get(&cgroup) } {
        Some(sets) if outbound => sets.egress,
        Some(sets) => sets.ingress,
        None => NOT_ISOLATED,
    }
}

#[inline(always)]
pub fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied()
}

/// The settings in place, not copied: the packet programs' first frame cannot spare the
/// 24 bytes of a copy (6.1 allows 512 bytes over the whole call chain).
#[inline(always)]
pub fn settings_in_map() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// The tenant floor's verdict, in the module that holds the rules it reads.
impl Ends {
    /// The verdict for a flow opened by the local end (`ORIGIN_OUTBOUND`) or by the remote.
    #[inline(always)]
    pub fn decide(&self, settings: &Settings, origin: u8) -> Reason {
        let outbound = origin == ORIGIN_OUTBOUND;
        let set = if cluster_policies(settings) { cluster_set(self.cgroup, outbound) } else { NOT_ISOLATED };
        if outbound {
            decide_flow(settings, self.local, self.remote, self.protocol, self.remote_port, LocalEnd::Source, set, &KernelExceptions)
        } else {
            decide_flow(settings, self.remote, self.local, self.protocol, self.local_port, LocalEnd::Destination, set, &KernelExceptions)
        }
    }
}

/// Whether a verdict came from the Admin tier (true) or the Baseline tier (false) of
/// ClusterNetworkPolicy; None for any other verdict.
#[inline(always)]
fn cluster_tier(reason: Reason) -> Option<bool> {
    match reason {
        Reason::AdminAccepted | Reason::AdminDenied => Some(true),
        Reason::BaselineAccepted | Reason::BaselineDenied => Some(false),
        _ => None,
    }
}

/// The position in tier set `set` of the first rule of the tier that matches the remote
/// end on `port`: looked up again, on the reporting path only, so deciding stays three
/// lookups.
#[inline(always)]
fn rule_position(ends: &Ends, set: u64, port: u16, admin: bool) -> u32 {
    let tiers = KernelExceptions.first_for_peer(set, &ends.remote, ends.protocol, port);
    TierMatch::position(if admin { tiers.admin } else { tiers.baseline })
}

/// For a ClusterNetworkPolicy verdict in the packet's own direction, (tier set, position of
/// the deciding rule), else zeros.
#[inline(always)]
fn cluster_rule_by_direction(ends: &Ends, direction: u8, reason: Reason) -> (u64, u32) {
    let Some(admin) = cluster_tier(reason) else { return (0, 0) };
    let outbound = direction == DIRECTION_EGRESS;
    let set = cluster_set(ends.cgroup, outbound);
    let port = if outbound { ends.remote_port } else { ends.local_port };
    (set, rule_position(ends, set, port, admin))
}

/// The same for a flow decided in direction `origin` (`ORIGIN_*`), which for a reply
/// re-decided as its connection is not the packet's. `origin` selects by arithmetic, never
/// by a branch: a branch would make the verifier tell the two origins apart on every path
/// that reaches this report, which took the deciders past its limit of a million
/// instructions.
#[inline(always)]
fn cluster_rule_by_origin(ends: &Ends, origin: u8, reason: Reason) -> (u64, u32) {
    const _: () = assert!(ORIGIN_OUTBOUND == 1 && ORIGIN_INBOUND & 1 == 0);
    let Some(admin) = cluster_tier(reason) else { return (0, 0) };
    // 1 for an outbound flow, else 0. Both sets are looked up: one lookup giving both made
    // LLVM's BPF backend crash (register allocation in moat_connect4).
    let outbound = u64::from(origin & ORIGIN_OUTBOUND);
    let (ingress, egress) = (cluster_set(ends.cgroup, false), cluster_set(ends.cgroup, true));
    let set = ingress ^ (ingress ^ egress).wrapping_mul(outbound);
    let (local, remote) = (u64::from(ends.local_port), u64::from(ends.remote_port));
    let port = (local ^ (local ^ remote) * outbound) as u16;
    (set, rule_position(ends, set, port, admin))
}

/// Decides a packet that matches no flow. A TCP segment that cannot open a connection may
/// belong to a flow whose entry was evicted, so either direction may vouch for it.
#[inline(always)]
pub fn decide_new(ends: &Ends, settings: &Settings, egress: bool, midstream: bool) -> (Reason, u8) {
    let origin = if egress { ORIGIN_OUTBOUND } else { ORIGIN_INBOUND };
    let reason = ends.decide(settings, origin);
    if reason.is_allow() || !midstream {
        return (reason, origin);
    }
    let reverse = if egress { ORIGIN_INBOUND } else { ORIGIN_OUTBOUND };
    let reverse_reason = ends.decide(settings, reverse);
    if reverse_reason.is_allow() {
        (reverse_reason, reverse)
    } else {
        (reason, origin)
    }
}

/// Reports the packet that `reason` decided in the packet's own direction.
#[inline(always)]
pub fn report(ends: &Ends, local_addr: &Addr, hook: u8, direction: u8, reason: Reason) {
    let rule = cluster_rule_by_direction(ends, direction, reason);
    write_report(ends, local_addr, hook, direction, reason, rule);
}

/// Reports the packet that `reason` decided: `direction` is the packet's, `origin` the
/// direction its flow was decided in (`ORIGIN_*`).
#[inline(always)]
pub fn report_as(ends: &Ends, local_addr: &Addr, hook: u8, direction: u8, origin: u8, reason: Reason) {
    let rule = cluster_rule_by_origin(ends, origin, reason);
    write_report(ends, local_addr, hook, direction, reason, rule);
}

/// Writes the event if the tenant's budget allows. `rule` is looked up before the budget is
/// asked, so a ClusterNetworkPolicy denial past its budget still pays the lookup: asked
/// first, the budget cost the deciders 38,000–94,000 more verified instructions on 6.1.
#[inline(always)]
fn write_report(ends: &Ends, local_addr: &Addr, hook: u8, direction: u8, reason: Reason, rule: (u64, u32)) {
    let Some(mut entry) = budget::reserve_flow(&ends.local_tenant(), reason.is_allow()) else {
        return;
    };
    let (cluster_set, rule_position) = rule;
    let kind = if reason.is_allow() { EVENT_KIND_ALLOW } else { EVENT_KIND_DENY };
    let policy_set = match reason {
        Reason::PolicyEgressDenied => ends.local.endpoint.egress_policy,
        Reason::PolicyIngressDenied => ends.local.endpoint.ingress_policy,
        _ => cluster_set,
    };
    const _: () = assert!(offset_of!(FlowEvent, protocol) == 4 && offset_of!(FlowEvent, timestamp_ns) == 8);
    // The addresses are written as `Addr` words: a copy of the byte array can be a call to
    // `memmove` (see `RuleKey`).
    const _: () = assert!(offset_of!(FlowEvent, local_addr) % 4 == 0 && offset_of!(FlowEvent, remote_addr) % 4 == 0);
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record, written whole before it is submitted: the first word
    // (kind to protocol and the 3-byte pad) at once, then every later field. As a struct
    // literal, the pad is zeroed by a call to `memset` (see `RuleKey`).
    unsafe {
        *(event as *mut u64) = u64::from_ne_bytes([kind, hook, direction, reason as u8, ends.protocol, 0, 0, 0]);
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).cgroup = ends.cgroup;
        (*event).local_tenant = ends.local_tenant();
        (*event).remote_tenant = ends.remote.tenant();
        addr_of_mut!((*event).local_addr).cast::<Addr>().write(*local_addr);
        addr_of_mut!((*event).remote_addr).cast::<Addr>().write(ends.remote_addr);
        (*event).local_port = ends.local_port;
        (*event).remote_port = ends.remote_port;
        (*event).rule_position = rule_position;
        (*event).policy_set = policy_set;
    }
    entry.submit(0);
}
