//! moat's eBPF programs: the tenant floor at the pods' cgroup root.
#![no_std]
#![no_main]
// Inline asm, for a verdict the verifier sees as exactly 0 or -EPERM (see guard::security).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod budget;
mod counters;
mod dns;
mod dns_tcp;
mod ends;
mod floor;
mod flows;
mod guard;
mod icmp;
mod maps;
mod packet;
mod verdicts;

use aya_ebpf::{
    bindings::{bpf_sock_addr, __sk_buff},
    helpers::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_device, cgroup_skb, cgroup_sock_addr, cgroup_sysctl, classifier},
    programs::{DeviceContext, SkBuffContext, SockAddrContext, SysctlContext, TcContext},
};
use moat_common::{
    dns::{DNS_OFF, DNS_PORT},
    event::{HOOK_CONNECT, HOOK_SENDMSG, HOOK_SKB},
    maps::{
        PodAddress, Settings, DIRECTION_EGRESS, DIRECTION_INGRESS, ORIGIN_INBOUND, ORIGIN_OUTBOUND,
        SETTING_REPORT_ALLOWED, STAGE_DECIDE, STAGE_DNS,
    },
    verdict::Reason,
    IPPROTO_TCP, IPPROTO_UDP,
};

use ends::{Ends, FlowId};
use flows::{FlowLookup, Tracked};
use maps::{EGRESS_STAGES, INGRESS_STAGES};
use packet::{Addr, Packet, Parsed};

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

/// Stage `STAGE_DECIDE` of `moat_egress`: every packet an established flow does not answer.
#[cgroup_skb(egress)]
pub fn moat_decide_out(ctx: SkBuffContext) -> i32 {
    on_undecided(&ctx, true)
}

/// Stage `STAGE_DECIDE` of `moat_ingress`.
#[cgroup_skb(ingress)]
pub fn moat_decide_in(ctx: SkBuffContext) -> i32 {
    on_undecided(&ctx, false)
}

/// Stage `STAGE_DNS` of `moat_egress`: a question to a DNS server, decided before any
/// flow-table shortcut (one socket asks many); then on as any packet.
#[cgroup_skb(egress)]
pub fn moat_dns_out(ctx: SkBuffContext) -> i32 {
    let Some((settings, cgroup)) = armed(&ctx) else { return PASS };
    if dns::refuses(&ctx, cgroup, settings) {
        return DROP;
    }
    established_or_decide(&ctx, true, cgroup, settings, packet::parse_linear(&ctx))
}

/// The packet programs' first stage. The DNS check and the decision are stages of their own
/// (tail calls, verified apart): inline, either made this program too large for the verifier.
#[inline(always)]
fn on_packet(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some((settings, cgroup)) = armed(ctx) else { return PASS };
    let linear = packet::parse_linear(ctx);
    if egress && settings.dns != DNS_OFF {
        let may_ask_dns = match &linear {
            Some(packet) => packet.protocol == IPPROTO_UDP && packet.dst_port == DNS_PORT,
            None => true,
        };
        if may_ask_dns {
            return next_stage(ctx, egress, STAGE_DNS);
        }
    }
    established_or_decide(ctx, egress, cgroup, settings, linear)
}

/// An established packet: one flow-table lookup, a per-CPU counter. A pod's traffic to
/// itself: passed before that, never tracked. Anything else goes to the decider, which looks
/// the flow up itself: a SYN that opens a connection goes there without this lookup (a
/// retransmitted one finds its entry there).
#[inline(always)]
fn established_or_decide(ctx: &SkBuffContext, egress: bool, cgroup: u64, settings: &Settings, linear: Option<Packet>) -> i32 {
    if let Some(packet) = linear {
        let (local_addr, remote_addr) = if egress { (&packet.src_addr, &packet.dst_addr) } else { (&packet.dst_addr, &packet.src_addr) };
        let direction = if egress { DIRECTION_EGRESS } else { DIRECTION_INGRESS };
        if own_traffic(ctx, local_addr, remote_addr, cgroup, direction) {
            return PASS;
        }
        if packet.protocol == IPPROTO_TCP && !packet.tcp_midstream {
            return next_stage(ctx, egress, STAGE_DECIDE);
        }
        let flow = flow_of(&packet, egress, cgroup);
        if let Tracked::Current(tenant) = flows::lookup(&flow.key(), settings.generation) {
            let direction = if egress { DIRECTION_EGRESS } else { DIRECTION_INGRESS };
            counters::established(tenant, direction, ctx.len() as u64);
            return PASS;
        }
    }
    next_stage(ctx, egress, STAGE_DECIDE)
}

/// Tail-calls the direction's stage `slot`.
#[inline(always)]
fn next_stage(ctx: &SkBuffContext, egress: bool, slot: u32) -> i32 {
    // SAFETY: the context is this program's own; on success the call does not return.
    unsafe {
        if egress {
            EGRESS_STAGES.tail_call(ctx, slot);
        } else {
            INGRESS_STAGES.tail_call(ctx, slot);
        }
    }
    // The slot is empty: only while the pin directory is deleted, before the links that hold
    // this program, as enforcement ends. Passed, and counted as not armed.
    let direction = if egress { DIRECTION_EGRESS } else { DIRECTION_INGRESS };
    counters::count(0, direction, Reason::NotReady, ctx.len() as u64);
    PASS
}

#[inline(always)]
fn on_undecided(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some((settings, cgroup)) = armed(ctx) else { return PASS };
    decide_packet(ctx, egress, cgroup, settings)
}

/// `SETTINGS` once an agent has armed enforcement, and the packet's cgroup. Each stage reads
/// them again: a tail call carries nothing but the skb. The settings stay in the map, not
/// copied: `decide_packet` reads the generation once.
#[inline(always)]
fn armed(ctx: &SkBuffContext) -> Option<(&'static Settings, u64)> {
    let settings = floor::settings_in_map()?;
    if settings.ready == 0 {
        return None;
    }
    // SAFETY: the context pointer is the program's own __sk_buff.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb as *mut __sk_buff) };
    Some((settings, cgroup))
}

/// The packet's flow from the local end: egress leaves from the local socket, ingress
/// arrives at it.
#[inline(always)]
fn flow_of(packet: &Packet, egress: bool, cgroup: u64) -> FlowId {
    let (remote_addr, local_port, remote_port) = if egress {
        (packet.dst_addr, packet.src_port, packet.dst_port)
    } else {
        (packet.src_addr, packet.dst_port, packet.src_port)
    };
    FlowId { cgroup, remote_addr, local_port, remote_port, protocol: packet.protocol }
}

/// Everything but an established packet: a new flow, a flow to re-decide after a change, a
/// packet the flow table does not track. `settings` is the map's value in place: the generation is
/// read once, first, and everything this run records carries it, so a change armed while it
/// decides still has the flow re-decided. Inline, so each decider holds its own direction's
/// code and no BPF call (docs/design.md, "Stages").
#[inline(always)]
fn decide_packet(ctx: &SkBuffContext, egress: bool, cgroup: u64, settings: &Settings) -> i32 {
    let generation = settings.generation;
    let packet = match packet::parse_linear(ctx) {
        Some(packet) => packet,
        None => match packet::parse(ctx) {
            Ok(Parsed::Ip(packet)) => packet,
            Ok(Parsed::NotIp) => return PASS,
            // Too short to hold the headers it claims: the stack drops it anyway.
            Err(_) => return DROP,
        },
    };
    if packet::is_ipv6_link_control(&packet) {
        return PASS;
    }
    let local_addr = if egress { packet.src_addr } else { packet.dst_addr };
    let direction = if egress { DIRECTION_EGRESS } else { DIRECTION_INGRESS };
    let bytes = ctx.len() as u64;
    let flow = flow_of(&packet, egress, cgroup);
    let key = flow.key();
    // A packet the first stage could not read in place: the same rule here.
    if own_traffic(ctx, &local_addr, &flow.remote_addr, cgroup, direction) {
        return PASS;
    }
    let report_allowed = settings.flags & SETTING_REPORT_ALLOWED != 0;
    let tracked = if !packet.trackable { Tracked::Missing } else { flows::lookup(&key, generation) };
    match tracked {
        Tracked::Current(tenant) => {
            counters::established(tenant, direction, bytes);
            PASS
        }
        Tracked::Stale(state) => {
            let origin = flows::origin_of(state);
            if let Some((reason, tenant)) = verdicts::get(&flow.verdict_inputs(origin), generation) {
                flows::renew(state, &key, generation, reason, tenant);
                counters::count(tenant, direction, reason, bytes);
                return PASS;
            }
            let ends = flow.ends(settings);
            let reason = flows::redecide(state, &key, &ends, settings, generation);
            // Reported as decided: in the connection's direction, for a reply not its own.
            counters::count(ends.local_tenant(), direction, reason, bytes);
            if reason.is_allow() {
                return PASS;
            }
            floor::report_as(&ends, &local_addr, HOOK_SKB, direction, flows::origin_to_report(state), reason);
            DROP
        }
        Tracked::Missing if packet.trackable => {
            let origin = if egress { ORIGIN_OUTBOUND } else { ORIGIN_INBOUND };
            if !report_allowed {
                if let Some((reason, tenant)) = verdicts::get(&flow.verdict_inputs(origin), generation) {
                    flows::track(&key, generation, origin, reason, tenant);
                    counters::count(tenant, direction, reason, bytes);
                    return PASS;
                }
            }
            let ends = flow.ends(settings);
            let (reason, origin) = floor::decide_new(&ends, settings, egress, packet.tcp_midstream);
            if reason.is_allow() {
                verdicts::put(&flow.verdict_inputs(origin), generation, reason, ends.local_tenant());
                flows::track(&key, generation, origin, reason, ends.local_tenant());
                if report_allowed {
                    floor::report(&ends, &local_addr, HOOK_SKB, direction, reason);
                }
            }
            finish(&ends, local_addr, direction, reason, bytes)
        }
        Tracked::Missing => {
            let ends = flow.ends(settings);
            let reason = floor::decide_new(&ends, settings, egress, false).0;
            finish(&ends, local_addr, direction, reason, bytes)
        }
    }
}

/// A pod's traffic to itself on its own loopback device, which no policy governs
/// (docs/design.md, "Verdict"): counted and passed. Never tracked nor cached: it costs no
/// flow-table insert, and the device, which neither key holds, is what makes it the pod's own.
/// Off loopback this is one context read.
#[inline(always)]
fn own_traffic(ctx: &SkBuffContext, local_addr: &Addr, remote_addr: &Addr, cgroup: u64, direction: u8) -> bool {
    if !on_loopback(ctx) || !ends::addresses_within_pod(local_addr, remote_addr) {
        return false;
    }
    let local = ends::local_peer(cgroup);
    if !ends::owns_its_loopback(&local) {
        return false;
    }
    counters::count(local.tenant(), direction, Reason::SamePod, ctx.len() as u64);
    true
}

/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Whether the packet is on the loopback device: `ifindex` is the device it leaves by
/// (egress) or arrived on (ingress). A test run's packet is on loopback unless it names
/// another device.
#[inline(always)]
fn on_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: a read of the program's own context.
    unsafe { (*ctx.skb.skb).ifindex == LOOPBACK_IFINDEX }
}

/// Counts a decided packet; reports and drops it if denied.
#[inline(always)]
fn finish(ends: &Ends, local_addr: Addr, direction: u8, reason: Reason, bytes: u64) -> i32 {
    counters::count(ends.local_tenant(), direction, reason, bytes);
    if reason.is_allow() {
        PASS
    } else {
        floor::report(ends, &local_addr, HOOK_SKB, direction, reason);
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
    // user_ip4/user_ip6 hold the address bytes in network order, as loaded words. Each a
    // load of its own: the verifier refuses a copy through a moved context pointer.
    let remote_addr = if ipv6 {
        // SAFETY: plain reads of the context's own fields.
        let word = |i: usize| unsafe { core::ptr::read_volatile(&addr.user_ip6[i]) };
        Addr([word(0), word(1), word(2), word(3)])
    } else {
        Addr::v4(addr.user_ip4)
    };
    // connect() or sendto() to the unspecified address reaches this host's loopback: the
    // kernel routes it to 127.0.0.1 (::1), which is what the packets will carry.
    let remote_addr = if remote_addr.is_unspecified() { Addr::loopback(ipv6) } else { remote_addr };
    let remote_port = u16::from_be(addr.user_port as u16);
    let protocol = addr.protocol as u8;
    // SAFETY: the kernel always sets `sk` for these attach types; plain reads of its fields.
    let (local_port, bound_addr) = unsafe {
        let sk = addr.__bindgen_anon_1.sk;
        if sk.is_null() {
            (0, Addr::ZERO)
        } else if ipv6 {
            let word = |i: usize| core::ptr::read_volatile(&(*sk).src_ip6[i]);
            ((*sk).src_port as u16, Addr([word(0), word(1), word(2), word(3)]))
        } else {
            let ip = (*sk).src_ip4;
            ((*sk).src_port as u16, if ip == 0 { Addr::ZERO } else { Addr::v4(ip) })
        }
    };
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if hook == HOOK_CONNECT && guard::kubelet_port(remote_port, remote_addr.bytes()) {
        return DROP;
    }
    // A pod's connect or send over its own loopback (a mesh sidecar's every hop): passed on
    // one lookup, before the flow, verdict and remote-end lookups the rest of this path makes.
    // The same rule as below, where a pod's own address is recognised too.
    if (remote_addr.is_loopback() || bound_addr.is_loopback()) && ends::owns_its_loopback(&ends::local_peer(cgroup)) {
        return PASS;
    }
    let flow = FlowId { cgroup, remote_addr, local_port, remote_port, protocol };
    // A bound socket's next datagram to a peer it already talks to (either side opened the
    // flow): one lookup, as for its packets.
    let key = flow.key();
    if local_port != 0 {
        if let Tracked::Current(_) = flows::lookup(&key, settings.generation) {
            return PASS;
        }
    }
    // A verdict this CPU reached for the same inputs; the SYN a connect() sends finds this
    // one's verdict the same way.
    let inputs = flow.verdict_inputs(ORIGIN_OUTBOUND);
    if verdicts::get(&inputs, settings.generation).is_some() {
        return PASS;
    }
    // A pod's own address or loopback: passed, and not cached (its packets are checked on
    // their device). An unbound socket's source is chosen later; a destination that is the
    // pod's own address (any container's) will have that address as its source too.
    let local_addr = if bound_addr != Addr::ZERO {
        bound_addr
    } else if unsafe { maps::POD_ADDRESSES.get(&PodAddress { cgroup, addr: remote_addr.to_bytes() }) }.is_some() {
        remote_addr
    } else {
        Addr::ZERO
    };
    let ends = flow.ends(&settings);
    if ends::owns_its_loopback(&ends.local) && ends::addresses_within_pod(&local_addr, &ends.remote_addr) {
        return PASS;
    }
    let reason = ends.decide(&settings, ORIGIN_OUTBOUND);
    if reason.is_allow() {
        verdicts::put(&inputs, settings.generation, reason, ends.local_tenant());
        return PASS;
    }
    // A reply to a flow the remote end opened (a UDP server answering with sendto) is
    // allowed whatever the reverse direction would say.
    if local_port != 0 {
        match flows::check_flow(&key, &ends, &settings) {
            FlowLookup::Current => return PASS,
            FlowLookup::Redecided(reason, _) if reason.is_allow() => return PASS,
            _ => {}
        }
    }
    floor::report(&ends, &Addr::ZERO, hook, DIRECTION_EGRESS, reason);
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
