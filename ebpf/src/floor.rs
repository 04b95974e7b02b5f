//! The tenant floor over the kernel maps: endpoint lookups, flow tracking, counters, events.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use moat_common::{
    event::{FlowEvent, EVENT_KIND_ALLOW, EVENT_KIND_DENY},
    maps::{
        Counter, CounterKey, FlowKey, FlowState, PolicyMatch, Settings, SharedPortKey,
        TenantPairKey, ORIGIN_INBOUND, ORIGIN_OUTBOUND, POLICY_FULL_BITS, VERDICT_ALLOW,
        VERDICT_DENY,
    },
    verdict::{decide_flow, Exceptions, LocalEnd, Peer, PolicyRules, Reason},
};

use crate::budget;
use crate::maps::{
    COUNTERS, FLOWS, LOCAL_ENDPOINTS, POLICY_RULES, REMOTE_ENDPOINTS, REMOTE_NETWORKS, SETTINGS,
    SHARED_PORTS, TENANT_PAIRS,
};

/// Refresh a flow's timestamp at most this often, to keep map writes off most packets.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

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
        POLICY_RULES.get(Key::new(POLICY_FULL_BITS, *key)).is_some()
    }
}

#[inline(always)]
pub fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied()
}

#[inline(always)]
pub fn local_peer(cgroup: u64) -> Peer {
    // SAFETY: the value is copied out at once.
    match unsafe { LOCAL_ENDPOINTS.get(&cgroup) } {
        Some(endpoint) => Peer::known(*endpoint),
        None => Peer::PENDING,
    }
}

#[inline(always)]
pub fn remote_peer(addr: &[u8; 16]) -> Peer {
    // SAFETY: as above.
    let exact = unsafe { REMOTE_ENDPOINTS.get(addr) };
    let range = REMOTE_NETWORKS.get(Key::new(128, *addr));
    Peer::remote_of(exact, range)
}

/// One end of a flow, local (by cgroup) and remote (by address), plus its ports.
pub struct Ends {
    pub cgroup: u64,
    pub local: Peer,
    pub remote_addr: [u8; 16],
    pub remote: Peer,
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
}

impl Ends {
    #[inline(always)]
    pub fn local_tenant(&self) -> u64 {
        self.local.tenant()
    }

    /// The verdict for a flow opened by the local end (`ORIGIN_OUTBOUND`) or by the remote.
    #[inline(always)]
    pub fn decide(&self, settings: &Settings, origin: u8) -> Reason {
        if origin == ORIGIN_OUTBOUND {
            decide_flow(settings, self.local, self.remote, self.protocol, self.remote_port, LocalEnd::Source, &KernelExceptions)
        } else {
            decide_flow(settings, self.remote, self.local, self.protocol, self.local_port, LocalEnd::Destination, &KernelExceptions)
        }
    }

    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            cgroup: self.cgroup,
            remote_addr: self.remote_addr,
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// The local tenant of a flow admitted under the current generation, refreshing its
/// timestamp at most once a second; `None` sends the packet down the slow path.
#[inline(always)]
pub fn established(key: &FlowKey, settings: &Settings) -> Option<u64> {
    let state = FLOWS.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup and is used before any other
    // map operation on FLOWS.
    let state = unsafe { &mut *state };
    if state.generation != settings.generation {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(state.last_seen_ns) > TOUCH_INTERVAL_NS {
        state.last_seen_ns = now;
    }
    Some(state.local_tenant)
}

pub enum FlowLookup {
    /// Admitted under the current generation.
    Current,
    /// Admitted earlier; re-decided in its original direction (allowed or cut).
    Redecided(Reason),
    Missing,
}

/// Looks `key` up and, if it exists under an older generation, re-decides it and either
/// renews it or removes it, so a revoked flow is cut on its next packet.
#[inline(always)]
pub fn check_flow(key: &FlowKey, ends: &Ends, settings: &Settings) -> FlowLookup {
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        return FlowLookup::Missing;
    };
    // SAFETY: the pointer comes from a successful lookup and is used before any other
    // map operation on FLOWS.
    let state = unsafe { &mut *state };
    if state.generation == settings.generation {
        let now = unsafe { bpf_ktime_get_ns() };
        if now.wrapping_sub(state.last_seen_ns) > TOUCH_INTERVAL_NS {
            state.last_seen_ns = now;
        }
        return FlowLookup::Current;
    }
    let reason = ends.decide(settings, state.origin);
    if reason.is_allow() {
        state.generation = settings.generation;
        state.reason = reason as u8;
        state.local_tenant = ends.local_tenant();
    } else {
        let _ = FLOWS.remove(key);
    }
    FlowLookup::Redecided(reason)
}

#[inline(always)]
pub fn track_flow(key: &FlowKey, ends: &Ends, settings: &Settings, origin: u8, reason: Reason) {
    let state = FlowState {
        generation: settings.generation,
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        local_tenant: ends.local_tenant(),
        origin,
        reason: reason as u8,
        _pad: [0; 6],
    };
    let _ = FLOWS.insert(key, &state, 0);
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

#[inline(always)]
pub fn count(tenant: u64, direction: u8, reason: Reason, bytes: u64) {
    let key = CounterKey {
        tenant,
        direction,
        verdict: if reason.is_allow() { VERDICT_ALLOW } else { VERDICT_DENY },
        reason: reason as u8,
        _pad: [0; 5],
    };
    if let Some(counter) = COUNTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, so no other writer races this one.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    } else {
        let _ = COUNTERS.insert(&key, &Counter { packets: 1, bytes }, 0);
    }
}

#[inline(always)]
pub fn report(ends: &Ends, local_addr: [u8; 16], hook: u8, direction: u8, reason: Reason) {
    let Some(mut entry) = budget::reserve_flow(&ends.local_tenant(), reason.is_allow()) else {
        return;
    };
    entry.write(FlowEvent {
        kind: if reason.is_allow() { EVENT_KIND_ALLOW } else { EVENT_KIND_DENY },
        hook,
        direction,
        reason: reason as u8,
        protocol: ends.protocol,
        _pad: [0; 3],
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup: ends.cgroup,
        local_tenant: ends.local_tenant(),
        remote_tenant: ends.remote.tenant(),
        local_addr,
        remote_addr: ends.remote_addr,
        local_port: ends.local_port,
        remote_port: ends.remote_port,
        _pad2: 0,
        policy_set: match reason {
            Reason::PolicyEgressDenied => ends.local.endpoint.egress_policy,
            Reason::PolicyIngressDenied => ends.local.endpoint.ingress_policy,
            _ => 0,
        },
    });
    entry.submit(0);
}
