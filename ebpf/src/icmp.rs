//! ICMP echo requests arriving at a pod: tc ingress on the pod's own interfaces, inside its
//! network namespace. The pod's kernel answers an echo request itself, without a socket, so
//! the cgroup_skb programs never see it. This program applies the destination's side of the
//! verdict (tenant floor, ingress NetworkPolicy, unknown-endpoint rule) with the same
//! `decide_flow`, maps, flow table, counters and events. Every other packet continues
//! untouched after one header load: cgroup_skb already handles socket traffic.

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use moat_common::{
    event::HOOK_SKB,
    maps::{capacity, DIRECTION_INGRESS, ORIGIN_INBOUND, SETTING_REPORT_ALLOWED},
    verdict::{Peer, Reason},
    IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::counters;
use crate::ends::{remote_peer, Ends};
use crate::floor;
use crate::flows::{self, FlowLookup};
use crate::maps::REMOTE_ENDPOINTS;
use crate::packet::{self, Addr, Headers, Parsed, Word, ETH_P_IP, ETH_P_IPV6};

/// Address of a pod on this node → one of its cgroups, written by the agent: the cgroup names
/// the pod in events and keys its flows, as a socket's cgroup does for cgroup_skb.
#[map]
pub static LOCAL_ADDRESSES: HashMap<[u8; 16], u64> =
    HashMap::pinned(capacity::LOCAL_ADDRESSES, 0);

/// TCX_NEXT / TC_ACT_UNSPEC: no opinion, the next program (or the stack) decides.
const NEXT: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

/// Loads relative to the network header, whatever link-layer header the device has (none on
/// L3 devices), where `TcContext::load` counts from the MAC header.
struct NetworkHeader<'a>(&'a TcContext);

impl Headers for NetworkHeader<'_> {
    #[inline(always)]
    fn ethertype(&self) -> u16 {
        u16::from_be(self.0.skb.protocol() as u16)
    }

    #[inline(always)]
    fn load<T: Word>(&self, offset: usize) -> Result<T, i64> {
        let mut data = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `data` and reports
        // failure otherwise; the skb pointer is the program's own context.
        let ret = unsafe {
            bpf_skb_load_bytes_relative(
                self.0.skb.skb as *const _,
                offset as u32,
                data.as_mut_ptr().cast(),
                size_of::<T>() as u32,
                BPF_HDR_START_NET,
            )
        };
        if ret == 0 {
            // SAFETY: fully written by the successful load above.
            Ok(unsafe { data.assume_init() })
        } else {
            Err(ret)
        }
    }
}

#[inline(always)]
pub fn on_ingress(ctx: &TcContext) -> i32 {
    let headers = NetworkHeader(ctx);
    if !may_be_icmp(&headers) {
        return NEXT;
    }
    let Some(settings) = floor::settings() else { return NEXT };
    if settings.ready == 0 {
        return NEXT;
    }
    // Truncated headers: the stack cannot answer what it cannot parse either.
    let Ok(Parsed::Ip(packet)) = packet::parse(&headers) else { return NEXT };
    if !packet.is_echo_request() {
        return NEXT;
    }
    // SAFETY: the value is copied out at once.
    let cgroup = unsafe { LOCAL_ADDRESSES.get(packet.dst_addr.bytes()) }.copied().unwrap_or(0);
    let ends = Ends {
        cgroup,
        local: local_peer(&packet.dst_addr),
        remote_addr: packet.src_addr,
        remote: remote_peer(&packet.src_addr, true),
        local_port: packet.dst_port,
        remote_port: packet.src_port,
        protocol: packet.protocol,
    };
    let key = ends.flow().key();
    let bytes = ctx.len() as u64;
    let (reason, origin) = match flows::check_flow(&key, &ends, &settings) {
        FlowLookup::Current => (Reason::Established, ORIGIN_INBOUND),
        FlowLookup::Redecided(reason, origin) => (reason, origin),
        FlowLookup::Missing => {
            let reason = ends.decide(&settings, ORIGIN_INBOUND);
            if reason.is_allow() {
                flows::track(&key, settings.generation, ORIGIN_INBOUND, reason, ends.local_tenant());
                if settings.flags & SETTING_REPORT_ALLOWED != 0 {
                    floor::report(&ends, &packet.dst_addr, HOOK_SKB, DIRECTION_INGRESS, reason);
                }
            }
            (reason, ORIGIN_INBOUND)
        }
    };
    counters::count(ends.local_tenant(), DIRECTION_INGRESS, reason, bytes);
    if reason.is_allow() {
        NEXT
    } else {
        floor::report_as(&ends, &packet.dst_addr, HOOK_SKB, DIRECTION_INGRESS, origin, reason);
        DROP
    }
}

/// The cheap test that lets TCP and UDP (nearly everything) through after one load. IPv6
/// extension headers may hide ICMPv6, so anything but a plain transport header is parsed.
#[inline(always)]
fn may_be_icmp(headers: &NetworkHeader) -> bool {
    match headers.ethertype() {
        ETH_P_IP => matches!(headers.load::<u8>(9), Ok(IPPROTO_ICMP)),
        ETH_P_IPV6 => matches!(headers.load::<u8>(6), Ok(next) if !matches!(next, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)),
        _ => false,
    }
}

/// The pod an echo request is addressed to, by address: `REMOTE_ENDPOINTS` holds every pod's,
/// this node's too, so this is how the source's node sees it. The packet arrived on a pod's
/// interface, so an address naming no pod (not yet known, or multicast) is pending, as a
/// cgroup below the pods' root without an entry is.
#[inline(always)]
fn local_peer(addr: &Addr) -> Peer {
    // SAFETY: the value is copied out at once.
    match unsafe { REMOTE_ENDPOINTS.get(addr.bytes()) } {
        Some(endpoint) => Peer::known(*endpoint),
        None => Peer::PENDING,
    }
}
