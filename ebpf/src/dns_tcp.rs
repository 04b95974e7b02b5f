//! Tenant DNS isolation over TCP. `moat_dns_sockops` (sock_ops at the pods' cgroup root) puts
//! every TCP connection a pod opens to port 53 into `DNS_SOCKETS`; `moat_dns_msg` (sk_msg,
//! attached to that map) then sees each `sendmsg` on it before TCP does, reads the question
//! after the 2-byte length prefix and decides it with the UDP path's parser (`dns::judge`). A
//! refused question never reaches the server: in block mode it is answered on the node, its
//! header turned into an NXDOMAIN response in place and the message redirected to the
//! connection's own receive side (`bpf_msg_redirect_hash`, `BPF_F_INGRESS`), so the resolver
//! reads the answer at once; if that redirect is refused the message is dropped and the send
//! fails (EACCES). NXDOMAIN: what a name that does not exist gets (REFUSED would tell that
//! the namespace exists).
//!
//! The byte stream is followed message by message: a passed message's remaining bytes are
//! passed without another look (`bpf_msg_apply_bytes`), so pipelined questions are each
//! decided, and a message split over several sends is corked (`bpf_msg_cork_bytes`) until
//! its question is all there — if its first bytes can start a query at all: anything else on
//! port 53 passes (`query_shaped`).

use aya_ebpf::{
    bindings::{sk_action::{SK_DROP, SK_PASS}, BPF_ANY, BPF_F_INGRESS},
    helpers::{
        bpf_get_current_cgroup_id, bpf_msg_apply_bytes, bpf_msg_cork_bytes,
        bpf_msg_pull_data, generated::{bpf_get_netns_cookie, bpf_probe_read_kernel},
    },
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use moat_common::{
    dns::{SocketKey, DNS_BLOCK, DNS_OFF, DNS_PORT, NAME_BUF},
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

/// The `SocketKey` of the connection behind a context pointer (`bpf_sock_ops` or
/// `sk_msg_md`: the same field names). Every field is read whichever the family, with word
/// reads: reads in branches get merged by LLVM into one load from a computed context offset,
/// which the verifier refuses.
macro_rules! socket_key {
    ($ctx:expr) => {{
        let ctx = $ctx;
        // SAFETY: word reads of the program's own context.
        let (family, local4, remote4, local_port, remote_port) = unsafe {
            (
                core::ptr::read_volatile(&(*ctx).family),
                core::ptr::read_volatile(&(*ctx).local_ip4),
                core::ptr::read_volatile(&(*ctx).remote_ip4),
                core::ptr::read_volatile(&(*ctx).local_port),
                core::ptr::read_volatile(&(*ctx).remote_port),
            )
        };
        let mut local = [0u32; 4];
        let mut remote = [0u32; 4];
        for i in 0..4 {
            // SAFETY: as above.
            unsafe {
                local[i] = core::ptr::read_volatile(&(*ctx).local_ip6[i]);
                remote[i] = core::ptr::read_volatile(&(*ctx).remote_ip6[i]);
            }
        }
        if family == AF_INET {
            (local, remote) = (Addr::v4(local4).0, Addr::v4(remote4).0);
        }
        // SAFETY: the program's own context, which the helper accepts in both program types.
        let netns = unsafe { bpf_get_netns_cookie(ctx as *mut _) };
        SocketKey { netns, local, remote, local_port, remote_port }
    }};
}

#[sock_ops]
pub fn moat_dns_sockops(ctx: SockOpsContext) -> u32 {
    // `remote_port` is in network order in the upper half of the word.
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && u32::from_be(ctx.remote_port()) == DNS_PORT as u32 {
        let ops = ctx.ops;
        let mut key = socket_key!(ops);
        // SAFETY: the program's own bpf_sock_ops; a failed insert leaves the connection
        // uninspected (a full map).
        let _ = DNS_SOCKETS.update(&mut key, unsafe { &mut *ops }, BPF_ANY as u64);
    }
    1
}

#[sk_msg]
pub fn moat_dns_msg(ctx: SkMsgContext) -> u32 {
    match on_msg(&ctx) {
        Verdict::Pass => SK_PASS,
        Verdict::Drop => SK_DROP,
        Verdict::Refuse(whole) => answer_refused(&ctx, whole),
    }
}

#[derive(Clone, Copy)]
enum Verdict {
    Pass,
    /// An unreadable message in block mode.
    Drop,
    /// A refused question in block mode, of this many bytes (prefix included).
    Refuse(u32),
}

/// Turns the refused question at the start of the message into an NXDOMAIN response and sends
/// it back to the connection's own receive side; dropped (EACCES) if that cannot be done.
/// Only when the send holds exactly that message: Linux 6.1 redirects the rest of the send
/// with it whatever `bpf_msg_apply_bytes` says (a question pipelined after it came back to
/// the resolver unsent, in the 6.1 VM), and a message still arriving could have its rest
/// sent on to the server.
#[inline(always)]
fn answer_refused(ctx: &SkMsgContext, whole: u32) -> u32 {
    const QR: u8 = 0x80;
    const AA_TC: u8 = 0x06;
    const RA_NXDOMAIN: u8 = 0x80 | 3;
    let (data, end) = (ctx.data(), ctx.data_end());
    if ctx.size() != whole || data + 6 > end {
        return SK_DROP;
    }
    // SAFETY: bytes 4 and 5 (the header's flags) lie within the checked packet range.
    unsafe {
        let flags = (data + 4) as *mut u8;
        *flags = (*flags | QR) & !AA_TC;
        *((data + 5) as *mut u8) = RA_NXDOMAIN;
    }
    let mut key = msg_socket(ctx);
    // SAFETY: the context pointer is the program's own sk_msg_md.
    unsafe { bpf_msg_apply_bytes(ctx.msg, whole) };
    // SK_PASS when the socket is found: the kernel then queues the message on its receive side.
    DNS_SOCKETS.redirect_msg(ctx, &mut key, BPF_F_INGRESS as u64) as u32
}

/// What to do with the message.
#[inline(always)]
fn on_msg(ctx: &SkMsgContext) -> Verdict {
    let Some(settings) = floor::settings() else { return Verdict::Pass };
    if settings.ready == 0 || settings.dns == DNS_OFF {
        return Verdict::Pass;
    }
    // A message that cannot be read (a failed pull under memory pressure) is dropped in
    // block mode: passed, its question would go unchecked, and its unknown length could leave
    // the next look off a message boundary. The resolver sees a failed send, as for a refusal.
    let unreadable = if settings.dns == DNS_BLOCK { Verdict::Drop } else { Verdict::Pass };
    let size = ctx.size();
    if size < 2 {
        cork(ctx, 2);
        return Verdict::Pass;
    }
    let Some(head) = read_head(ctx, size) else { return unreadable };
    let whole = 2 + u16::from_be_bytes([head[0], head[1]]) as u32;
    if !query_shaped(&head, size) {
        // Not a question a DNS server answers (see `query_shaped`): passed whole, so the next
        // look still starts where the server's next message does.
        // SAFETY: the context pointer is the program's own sk_msg_md.
        unsafe { bpf_msg_apply_bytes(ctx.msg, whole) };
        return Verdict::Pass;
    }
    // Enough to decide on: the whole message, or its header and a name of any length.
    let needed = whole.min(DECIDED_PREFIX);
    if size < needed {
        cork(ctx, needed);
        return Verdict::Pass;
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
    if dns::judge(scratch, len, cgroup, &settings, whole as u64, &ends(&msg_socket(ctx))) {
        return Verdict::Refuse(whole);
    }
    // The rest of this message, in this send or later ones, passes without another look.
    // SAFETY: the context pointer is the program's own sk_msg_md.
    unsafe { bpf_msg_apply_bytes(ctx.msg, whole) };
    Verdict::Pass
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

/// The connection as `DNS_SOCKETS` keys it.
#[inline(always)]
fn msg_socket(ctx: &SkMsgContext) -> SocketKey {
    let msg = ctx.msg;
    socket_key!(msg)
}

/// The connection's ends, for the event.
#[inline(always)]
fn ends(key: &SocketKey) -> Packet {
    Packet {
        protocol: IPPROTO_TCP,
        src_addr: Addr(key.local),
        dst_addr: Addr(key.remote),
        src_port: key.local_port as u16,
        dst_port: u32::from_be(key.remote_port) as u16,
        icmp_type: 0,
        tcp_midstream: false,
        trackable: false,
    }
}
