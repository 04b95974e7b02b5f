//! moat's eBPF programs: the tenant floor at the pods' cgroup root.
#![no_std]
#![no_main]
// Inline asm, for a verdict the verifier sees as exactly 0 or -EPERM (see guard::security).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod budget;
mod floor;
mod guard;
mod icmp;
mod maps;
mod packet;

use aya_ebpf::{
    bindings::{bpf_sock_addr, __sk_buff},
    helpers::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_device, cgroup_skb, cgroup_sock_addr, cgroup_sysctl, classifier},
    programs::{DeviceContext, SkBuffContext, SockAddrContext, SysctlContext, TcContext},
};
use moat_common::{
    event::{HOOK_CONNECT, HOOK_SENDMSG, HOOK_SKB},
    maps::{
        ipv4_mapped, FlowKey, DIRECTION_EGRESS, DIRECTION_INGRESS, ORIGIN_OUTBOUND,
        SETTING_REPORT_ALLOWED,
    },
    verdict::Reason,
};

use floor::{Ends, FlowLookup};
use packet::Parsed;

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn moat_egress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, true)
}

#[cgroup_skb(ingress)]
pub fn moat_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, false)
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some(settings) = floor::settings() else { return PASS };
    if settings.ready == 0 {
        return PASS;
    }
    let packet = match packet::parse(ctx) {
        Ok(Parsed::Ip(packet)) => packet,
        Ok(Parsed::NotIp) => return PASS,
        // Too short to hold the headers it claims: the stack drops it anyway.
        Err(_) => return DROP,
    };
    if packet::is_ipv6_link_control(&packet) {
        return PASS;
    }
    // SAFETY: the context pointer is the program's own __sk_buff.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb as *mut __sk_buff) };
    let (local_addr, remote_addr, local_port, remote_port) = if egress {
        (packet.src_addr, packet.dst_addr, packet.src_port, packet.dst_port)
    } else {
        (packet.dst_addr, packet.src_addr, packet.dst_port, packet.src_port)
    };
    let direction = if egress { DIRECTION_EGRESS } else { DIRECTION_INGRESS };
    let bytes = ctx.len() as u64;
    let key = FlowKey {
        cgroup,
        remote_addr,
        local_port,
        remote_port,
        protocol: packet.protocol,
        _pad: [0; 3],
    };
    // Fast path: a flow admitted under the current generation needs no endpoint lookups.
    if packet.trackable {
        if let Some(tenant) = floor::established(&key, &settings) {
            floor::count(tenant, direction, Reason::Established, bytes);
            return PASS;
        }
    }
    let ends = Ends {
        cgroup,
        local: floor::local_peer(cgroup),
        remote_addr,
        remote: floor::remote_peer(&remote_addr),
        local_port,
        remote_port,
        protocol: packet.protocol,
    };
    let reason = if packet.trackable {
        match floor::check_flow(&key, &ends, &settings) {
            FlowLookup::Current => Reason::Established,
            FlowLookup::Redecided(reason) => reason,
            FlowLookup::Missing => {
                let (reason, origin) =
                    floor::decide_new(&ends, &settings, egress, packet.tcp_midstream);
                if reason.is_allow() {
                    floor::track_flow(&key, &ends, &settings, origin, reason);
                    if settings.flags & SETTING_REPORT_ALLOWED != 0 {
                        floor::report(&ends, local_addr, HOOK_SKB, direction, reason);
                    }
                }
                reason
            }
        }
    } else {
        floor::decide_new(&ends, &settings, egress, false).0
    };
    floor::count(ends.local_tenant(), direction, reason, bytes);
    if reason.is_allow() {
        PASS
    } else {
        floor::report(&ends, local_addr, HOOK_SKB, direction, reason);
        DROP
    }
}

/// Benchmark baseline only (`moat __bench-datapath`): passes every packet. Never attached.
#[cgroup_skb]
pub fn moat_noop(_ctx: SkBuffContext) -> i32 {
    PASS
}

#[cgroup_sock_addr(connect4)]
pub fn moat_connect4(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, false, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn moat_connect6(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, true, HOOK_CONNECT)
}

/// Runtime guard: a pod's connect() to a container runtime's socket path. aya 0.14 knows no
/// connect_unix section: it parses this one as connect4 and never loads it; the agent loads
/// it with the BPF_CGROUP_UNIX_CONNECT attach type (`kernel::unix_connect`).
#[cgroup_sock_addr(connect4)]
pub fn moat_connect_unix(ctx: SockAddrContext) -> i32 {
    guard::unix_connect::connect(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn moat_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, false, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn moat_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, true, HOOK_SENDMSG)
}

/// Fails a denied connect() or sendto() at once with EPERM, instead of letting the packet be
/// dropped and the caller time out. The packet programs stay the enforcement of record.
#[inline(always)]
fn on_sock_addr(ctx: &SockAddrContext, ipv6: bool, hook: u8) -> i32 {
    let Some(settings) = floor::settings() else { return PASS };
    if settings.ready == 0 {
        return PASS;
    }
    // SAFETY: the context pointer is the program's own bpf_sock_addr.
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let remote_addr = if ipv6 {
        let words = addr.user_ip6;
        let mut bytes = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    } else {
        ipv4_mapped(addr.user_ip4.to_ne_bytes())
    };
    let remote_port = u16::from_be(addr.user_port as u16);
    let protocol = addr.protocol as u8;
    // SAFETY: the kernel always sets `sk` for these attach types.
    let local_port = unsafe {
        let sk = addr.__bindgen_anon_1.sk;
        if sk.is_null() { 0 } else { (*sk).src_port as u16 }
    };
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if hook == HOOK_CONNECT && guard::kubelet_port(remote_port, &remote_addr) {
        return DROP;
    }
    let ends = Ends {
        cgroup,
        local: floor::local_peer(cgroup),
        remote_addr,
        remote: floor::remote_peer(&remote_addr),
        local_port,
        remote_port,
        protocol,
    };
    let reason = ends.decide(&settings, ORIGIN_OUTBOUND);
    if reason.is_allow() {
        return PASS;
    }
    // A reply to a flow the remote end opened (a UDP server answering with sendto) is
    // allowed whatever the reverse direction would say.
    if local_port != 0 {
        let key = ends.flow_key();
        match floor::check_flow(&key, &ends, &settings) {
            FlowLookup::Current => return PASS,
            FlowLookup::Redecided(reason) if reason.is_allow() => return PASS,
            _ => {}
        }
    }
    floor::report(&ends, [0; 16], hook, DIRECTION_EGRESS, reason);
    DROP
}

/// ICMP echo requests into a pod (tc ingress on its interfaces): see `icmp.rs`.
#[classifier]
pub fn moat_icmp_ingress(ctx: TcContext) -> i32 {
    icmp::on_ingress(&ctx)
}

/// Runtime guard: writes to the host's kernel sysctls (`escape.kernel-sysctl`).
#[cgroup_sysctl]
pub fn moat_sysctl(ctx: SysctlContext) -> i32 {
    guard::sysctl::on_sysctl(&ctx)
}

/// Runtime guard: block devices from pods (`escape.host-mount`).
#[cgroup_device]
pub fn moat_device(ctx: DeviceContext) -> i32 {
    guard::device::on_device(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
