//! Tenant DNS isolation on the egress packet path: a pod's UDP question to port 53 is read
//! and decided with `moat_common::dns` before any flow-table shortcut (one socket asks
//! many questions). A refused question is dropped at the pod's cgroup egress hook, which
//! fails the resolver's send at once with EPERM instead of leaving it to time out.

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_ktime_get_ns, helpers::bpf_skb_load_bytes,
    programs::SkBuffContext,
};
use moat_common::{
    dns::{
        classify, decide, AddressOwner, DnsMaps, DnsNamespace, DnsScratch, DnsVerdict, DnsZone, NamespaceKey, DNS_BLOCK,
        DNS_PORT, NAME_BUF,
    },
    event::{FlowEvent, EVENT_KIND_DENY, HOOK_SENDMSG, HOOK_SKB},
    maps::{Settings, TenantPairKey, DIRECTION_EGRESS},
    verdict::Reason,
    IPPROTO_UDP,
};

use crate::budget;
use crate::counters;
use crate::maps::{DNS_NAMESPACES, DNS_SCRATCH, DNS_SERVICES, DNS_ZONES, LOCAL_ENDPOINTS, REMOTE_ENDPOINTS, TENANT_PAIRS};
use crate::packet::{self, Addr, Headers, Packet, ETH_P_IP};

/// UDP header, then the DNS header's fixed 12 bytes before the question name.
const NAME_FROM_L4: usize = 8 + 12;

struct KernelDnsMaps;

impl DnsMaps for KernelDnsMaps {
    #[inline(always)]
    fn zone(&self, slot: u32) -> Option<&DnsZone> {
        DNS_ZONES.get(slot)
    }

    #[inline(always)]
    fn address(&self, addr: &[u8; 16]) -> Option<AddressOwner> {
        // SAFETY: the value is copied out at once.
        let endpoint = unsafe { REMOTE_ENDPOINTS.get(addr) }?;
        Some(AddressOwner { tenant: endpoint.tenant, shared: endpoint.shared != 0 })
    }

    #[inline(always)]
    fn service(&self, addr: &[u8; 16]) -> Option<DnsNamespace> {
        // SAFETY: the key is read by the lookup that follows and never kept; the namespace
        // entry is copied out at once.
        let namespace = unsafe { DNS_SERVICES.get(addr) }?;
        unsafe { DNS_NAMESPACES.get(namespace).copied() }
    }

    #[inline(always)]
    fn namespace(&self, key: &NamespaceKey) -> Option<DnsNamespace> {
        // SAFETY: the value is copied out at once.
        unsafe { DNS_NAMESPACES.get(key).copied() }
    }

    #[inline(always)]
    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        // SAFETY: only tested for presence.
        unsafe { TENANT_PAIRS.get(key).is_some() }
    }
}

/// Decides the packet if it is a question to a DNS server (UDP to port 53) leaving a pod.
/// Returns true to drop it. Out of line, and parsing the headers itself, so the packet
/// program's own frame holds nothing for it across the call.
#[inline(never)]
pub fn refuses(ctx: &SkBuffContext, cgroup: u64, settings: &Settings) -> bool {
    let packet = match packet::parse_linear(ctx) {
        Some(packet) => packet,
        None => match packet::parse(ctx) {
            Ok(packet::Parsed::Ip(packet)) => packet,
            _ => return false,
        },
    };
    if packet.dst_port != DNS_PORT || packet.protocol != IPPROTO_UDP {
        return false;
    }
    decide_question(ctx, &packet, cgroup, settings)
}

#[inline(always)]
fn decide_question(ctx: &SkBuffContext, packet: &Packet, cgroup: u64, settings: &Settings) -> bool {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's scratch entry, used by nothing else while this program runs.
    let scratch = unsafe { &mut *scratch };
    let len = load_name(ctx, &mut scratch.name).unwrap_or(0);
    judge(scratch, len, cgroup, settings, ctx.len() as u64, packet)
}

/// Decides the question loaded in `scratch.name[..len]`, asked by the pod in `cgroup` over
/// `packet`'s ends (UDP, or a TCP connection: `dns_tcp`). A refusal is counted and reported
/// in both modes; returns true to drop it (block mode).
#[inline(always)]
pub fn judge(scratch: &mut DnsScratch, len: usize, cgroup: u64, settings: &Settings, bytes: u64, packet: &Packet) -> bool {
    // SAFETY: the value is copied out at once.
    let querier = unsafe { LOCAL_ENDPOINTS.get(&cgroup).map(|endpoint| endpoint.tenant) }.unwrap_or(0);
    let maps = KernelDnsMaps;
    let question = classify(scratch, len, &maps);
    let DnsVerdict::Refuse { tenant, malformed } = decide(question, querier, &maps) else {
        return false;
    };
    let block = settings.dns == DNS_BLOCK;
    let reason = match (malformed, block) {
        (false, true) => Reason::DnsCrossTenant,
        (true, true) => Reason::DnsMalformed,
        (false, false) => Reason::DnsCrossTenantDetected,
        (true, false) => Reason::DnsMalformedDetected,
    };
    counters::count(querier, DIRECTION_EGRESS, reason, bytes);
    report(packet, cgroup, querier, tenant, reason);
    block
}

/// Loads the question name (up to `NAME_BUF` bytes, fewer if the packet ends first) and
/// returns how many bytes were loaded; `None` if the packet holds no name at all.
#[inline(always)]
fn load_name(ctx: &SkBuffContext, name: &mut [u8; NAME_BUF]) -> Option<usize> {
    let l4 = l4_offset(ctx)?;
    let offset = l4 + NAME_FROM_L4;
    let available = (ctx.len() as usize).checked_sub(offset)?;
    if available == 0 {
        return None;
    }
    // 1..=NAME_BUF, in a form the verifier bounds.
    let len = ((available.min(NAME_BUF) - 1) & (NAME_BUF - 1)) + 1;
    // SAFETY: `name` holds NAME_BUF bytes and `len` is at most that.
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const __sk_buff as *const _, offset as u32, name.as_mut_ptr() as *mut _, len as u32)
    };
    (ret == 0).then_some(len)
}

/// Where the UDP header starts, from the network header.
#[inline(always)]
fn l4_offset(ctx: &SkBuffContext) -> Option<usize> {
    if ctx.ethertype() == ETH_P_IP {
        let version_ihl: u8 = ctx.load(0).ok()?;
        return Some((version_ihl & 0x0f) as usize * 4);
    }
    let next: u8 = ctx.load(6).ok()?;
    let (protocol, offset, first_fragment) = packet::skip_ipv6_extensions(ctx, next).ok()?;
    (protocol == IPPROTO_UDP && first_fragment).then_some(offset)
}

/// Its own frame: the event record stays off the stack of `refuses`.
#[inline(never)]
fn report(packet: &Packet, cgroup: u64, querier: u64, tenant: u64, reason: Reason) {
    // A deny record in both modes (detect: with the allowing reason), budgeted as denials.
    let Some(mut entry) = budget::reserve_flow(&querier, false) else { return };
    entry.write(FlowEvent {
        kind: EVENT_KIND_DENY,
        // A TCP question is decided where the pod sends it (sk_msg); a UDP one per packet.
        hook: if packet.protocol == IPPROTO_UDP { HOOK_SKB } else { HOOK_SENDMSG },
        direction: DIRECTION_EGRESS,
        reason: reason as u8,
        protocol: packet.protocol,
        _pad: [0; 3],
        // SAFETY: no arguments, no side effects.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup,
        local_tenant: querier,
        remote_tenant: tenant,
        local_addr: packet.src_addr.to_bytes(),
        remote_addr: Addr::to_bytes(packet.dst_addr),
        local_port: packet.src_port,
        remote_port: packet.dst_port,
        rule_position: 0,
        policy_set: 0,
    });
    entry.submit(0);
}
