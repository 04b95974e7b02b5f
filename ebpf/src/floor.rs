//! The tenant floor over the kernel maps: endpoint lookups, the verdict, events.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use moat_common::{
    event::{FlowEvent, EVENT_KIND_ALLOW, EVENT_KIND_DENY},
    maps::{
        PolicyMatch, Settings, SharedPortKey, TenantPairKey, ORIGIN_INBOUND, ORIGIN_OUTBOUND,
        POLICY_FULL_BITS,
    },
    verdict::{decide_flow, Exceptions, LocalEnd, Peer, PolicyRules, Reason},
};

use crate::budget;
use crate::flows::FlowId;
use crate::maps::{
    LOCAL_ENDPOINTS, POLICY_RULES, REMOTE_ENDPOINTS, REMOTE_NETWORKS, SETTINGS, SHARED_PORTS,
    TENANT_PAIRS,
};
use crate::packet::Addr;

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

/// The remote end by address. `with_range`: also look up the address range, whose identity
/// ipBlock rules match on; without it, a pod found by its exact address is classified by that
/// entry alone, which is all the tenant floor reads (the range lookup is the trie walk).
#[inline(always)]
pub fn remote_peer(addr: &Addr, with_range: bool) -> Peer {
    // SAFETY: as above.
    let exact = unsafe { REMOTE_ENDPOINTS.get(addr.bytes()) };
    if exact.is_some() && !with_range {
        return Peer::remote_of(exact, None);
    }
    let range = REMOTE_NETWORKS.get(Key::new(128, addr.0));
    Peer::remote_of(exact, range)
}

/// One end of a flow, local (by cgroup) and remote (by address), plus its ports.
pub struct Ends {
    pub cgroup: u64,
    pub local: Peer,
    pub remote_addr: Addr,
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
    pub fn flow(&self) -> FlowId {
        FlowId {
            cgroup: self.cgroup,
            remote_addr: self.remote_addr,
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
        }
    }
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
        remote_addr: ends.remote_addr.to_bytes(),
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
