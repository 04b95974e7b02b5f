//! Tenant DNS isolation over TCP. `moat_dns_sockops` (sock_ops at the pods' cgroup root) puts
//! every TCP connection a pod opens to port 53 into `DNS_SOCKETS`; `moat_dns_msg` (sk_msg,
//! attached to that map) then sees each `sendmsg` on it before TCP does, reads the question
//! after the 2-byte length prefix and decides it with the UDP path's parser (`dns::judge`). A
//! refused question is dropped whole: the resolver's send fails at once (EACCES) and nothing
//! reaches the server.
//!
//! The byte stream is followed message by message: a passed message's remaining bytes are
//! passed without another look (`bpf_msg_apply_bytes`), so pipelined questions are each
//! decided, and a message split over several sends is corked (`bpf_msg_cork_bytes`) until
//! its question is all there — if its first bytes can start a query at all: anything else on
//! port 53 passes (`query_shaped`).

use aya_ebpf::{
    bindings::{sk_action::{SK_DROP, SK_PASS}, BPF_ANY},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_msg_apply_bytes, bpf_msg_cork_bytes,
        bpf_msg_pull_data, generated::bpf_probe_read_kernel,
    },
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use moat_common::{
    dns::{DNS_BLOCK, DNS_OFF, DNS_PORT, NAME_BUF},
    IPPROTO_TCP,
};

use crate::dns;
use crate::floor;
use crate::maps::{DNS_SCRATCH, DNS_SOCKETS};
use crate::packet::{Addr, Packet};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const AF_INET: u32 = 2;
/// The length prefix and the DNS header's fixed 12 bytes before the question name.
const NAME_FROM_MSG: u32 = 2 + 12;
/// What is read of a message to decide it: through a name of the longest length.
const DECIDED_PREFIX: u32 = NAME_FROM_MSG + NAME_BUF as u32;

#[sock_ops]
pub fn moat_dns_sockops(ctx: SockOpsContext) -> u32 {
    // `remote_port` is in network order in the upper half of the word.
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && u32::from_be(ctx.remote_port()) == DNS_PORT as u32 {
        // SAFETY: the context pointer is the program's own bpf_sock_ops.
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
        // SAFETY: as above; a failed insert leaves the connection uninspected (a full map).
        let _ = DNS_SOCKETS.update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
    }
    1
}

#[sk_msg]
pub fn moat_dns_msg(ctx: SkMsgContext) -> u32 {
    if on_msg(&ctx) {
        SK_DROP
    } else {
        SK_PASS
    }
}

/// True to drop the message (a refused question in block mode).
#[inline(always)]
fn on_msg(ctx: &SkMsgContext) -> bool {
    let Some(settings) = floor::settings() else { return false };
    if settings.ready == 0 || settings.dns == DNS_OFF {
        return false;
    }
    // A message that cannot be read (a failed pull under memory pressure) is dropped in
    // block mode: passed, its question would go unchecked, and its unknown length could leave
    // the next look off a message boundary. The resolver sees a failed send, as for a refusal.
    let unreadable = settings.dns == DNS_BLOCK;
    let size = ctx.size();
    if size < 2 {
        cork(ctx, 2);
        return false;
    }
    let Some(head) = read_head(ctx, size) else { return unreadable };
    let whole = 2 + u16::from_be_bytes([head[0], head[1]]) as u32;
    if !query_shaped(&head, size) {
        // Not a question a DNS server answers (see `query_shaped`): passed whole, so the next
        // look still starts where the server's next message does.
        // SAFETY: the context pointer is the program's own sk_msg_md.
        unsafe { bpf_msg_apply_bytes(ctx.msg, whole) };
        return false;
    }
    // Enough to decide on: the whole message, or its header and a name of any length.
    let needed = whole.min(DECIDED_PREFIX);
    if size < needed {
        cork(ctx, needed);
        return false;
    }
    // SAFETY: the context pointer is the program's own sk_msg_md.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, needed, 0) } != 0 {
        return unreadable;
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return unreadable };
    // SAFETY: this CPU's scratch entry, used by nothing else while this program runs.
    let scratch = unsafe { &mut *scratch };
    let len = load_name(ctx, needed, &mut scratch.name);
    // SAFETY: no arguments; sendmsg runs in the sending task.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if dns::judge(scratch, len, cgroup, &settings, whole as u64, &ends(ctx)) {
        // Dropped whole, nothing applied: the resolver's next send starts a message again.
        return true;
    }
    // The rest of this message, in this send or later ones, passes without another look.
    // SAFETY: the context pointer is the program's own sk_msg_md.
    unsafe { bpf_msg_apply_bytes(ctx.msg, whole) };
    false
}

/// Holds the data back until `bytes` are there; the program then runs again on all of it.
#[inline(always)]
fn cork(ctx: &SkMsgContext, bytes: u32) {
    // SAFETY: the context pointer is the program's own sk_msg_md.
    unsafe { bpf_msg_cork_bytes(ctx.msg, bytes) };
}

/// The length prefix and the first 6 header bytes (id, flags, question count), as many of
/// them as the message holds (at least the prefix: `size` >= 2); the rest left zero.
#[inline(always)]
fn read_head(ctx: &SkMsgContext, size: u32) -> Option<[u8; 8]> {
    let len = if size >= 8 {
        8
    } else if size >= 5 {
        5
    } else {
        2
    };
    // SAFETY: the context pointer is the program's own sk_msg_md.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, len, 0) } != 0 {
        return None;
    }
    let mut head = [0u8; 8];
    // SAFETY: at most 8 bytes into an 8-byte buffer, from data the pull made contiguous.
    let ret = unsafe { bpf_probe_read_kernel(head.as_mut_ptr() as *mut _, len, ctx.data() as *const _) };
    (ret == 0).then_some(head)
}

/// Whether the bytes there so far can start a question a DNS server answers: what CoreDNS's
/// DNS library accepts (a query, opcode QUERY or NOTIFY, exactly one question); a response,
/// another opcode or another question count is refused by the server unanswered. So
/// anything else on port 53 (not DNS at all) passes instead of waiting, corked, for a
/// question that never comes; a message that may still be one is held until it is there.
#[inline(always)]
fn query_shaped(head: &[u8; 8], size: u32) -> bool {
    const QR: u8 = 0x80;
    let opcode = (head[4] >> 3) & 0x0f;
    if size >= 5 && (head[4] & QR != 0 || (opcode != 0 && opcode != 4)) {
        return false;
    }
    size < 8 || (head[6] == 0 && head[7] == 1)
}

/// Copies the question name (bytes `NAME_FROM_MSG..needed`, at most `NAME_BUF`) and returns
/// how many were copied; 0 for a message too short to hold a name.
#[inline(always)]
fn load_name(ctx: &SkMsgContext, needed: u32, name: &mut [u8; NAME_BUF]) -> usize {
    let Some(available) = needed.checked_sub(NAME_FROM_MSG).filter(|n| *n > 0) else { return 0 };
    // 1..=NAME_BUF, masked in asm: LLVM drops a mask in Rust it can prove redundant, and
    // the verifier, which cannot, then sees no upper bound.
    let mut len = (available as u64).min(NAME_BUF as u64) - 1;
    // SAFETY: register arithmetic only.
    unsafe { core::arch::asm!("{len} &= 255", len = inout(reg) len) };
    let len = len as usize + 1;
    let from = ctx.data() + NAME_FROM_MSG as usize;
    // SAFETY: `name` holds NAME_BUF bytes and `len` is at most that; the source lies within
    // the `needed` bytes the pull made contiguous.
    let ret = unsafe { bpf_probe_read_kernel(name.as_mut_ptr() as *mut _, len as u32, from as *const _) };
    if ret == 0 { len } else { 0 }
}

/// The connection's ends, for the event.
#[inline(always)]
fn ends(ctx: &SkMsgContext) -> Packet {
    let msg = ctx.msg;
    // SAFETY: word reads of the program's own sk_msg_md, as the verifier requires them.
    let (family, remote_port, local_port) = unsafe {
        (
            core::ptr::read_volatile(&(*msg).family),
            core::ptr::read_volatile(&(*msg).remote_port),
            core::ptr::read_volatile(&(*msg).local_port),
        )
    };
    // Every field read whichever the family: reads in branches get merged by LLVM into one
    // load from a computed context offset, which the verifier refuses.
    let mut local = [0u32; 4];
    let mut remote = [0u32; 4];
    for i in 0..4 {
        // SAFETY: as above.
        unsafe {
            local[i] = core::ptr::read_volatile(&(*msg).local_ip6[i]);
            remote[i] = core::ptr::read_volatile(&(*msg).remote_ip6[i]);
        }
    }
    // SAFETY: as above.
    let (local4, remote4) = unsafe { (core::ptr::read_volatile(&(*msg).local_ip4), core::ptr::read_volatile(&(*msg).remote_ip4)) };
    let (local_addr, remote_addr) =
        if family == AF_INET { (Addr::v4(local4), Addr::v4(remote4)) } else { (Addr(local), Addr(remote)) };
    Packet {
        protocol: IPPROTO_TCP,
        src_addr: local_addr,
        dst_addr: remote_addr,
        src_port: local_port as u16,
        dst_port: u32::from_be(remote_port) as u16,
        icmp_type: 0,
        tcp_midstream: false,
        trackable: false,
    }
}
