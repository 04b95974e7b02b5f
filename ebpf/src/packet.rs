//! Reads the addresses, protocol and ports of a packet, from the network header on: where a
//! cgroup_skb program's data starts, or (tc) relative to it.
//!
//! Every read is a typed word (u8/u16/u32), never a byte array: LLVM copies an unaligned
//! `[u8; 16]` byte by byte, which made address handling most of the per-packet cost.

use aya_ebpf::programs::SkBuffContext;
use moat_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// A 16-byte address in network order (IPv4 as `::ffff:a.b.c.d`), held as aligned words so
/// that copies are two 8-byte moves. The bytes are those of the maps' `[u8; 16]` keys.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct Addr(pub [u32; 4]);

impl Addr {
    pub const ZERO: Self = Self([0; 4]);

    /// IPv4 `word` (the four address bytes as loaded from the packet) as IPv4-mapped.
    #[inline(always)]
    pub fn v4(word: u32) -> Self {
        Self([0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), word])
    }

    /// 127.0.0.1 or ::1.
    #[inline(always)]
    pub fn loopback(ipv6: bool) -> Self {
        if ipv6 {
            Self([0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])])
        } else {
            Self::v4(u32::from_ne_bytes([127, 0, 0, 1]))
        }
    }

    /// 0.0.0.0 (IPv4-mapped) or ::.
    #[inline(always)]
    pub fn is_unspecified(&self) -> bool {
        let [w0, w1, w2, w3] = self.0;
        w0 == 0 && w1 == 0 && w3 == 0 && (w2 == 0 || w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
    }

    /// 127.0.0.0/8 (IPv4-mapped) or ::1: an address that never leaves its network namespace.
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        let [w0, w1, w2, w3] = self.0;
        w0 == 0
            && w1 == 0
            && ((w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]) && w3.to_ne_bytes()[0] == 127)
                || (w2 == 0 && w3 == u32::from_ne_bytes([0, 0, 0, 1])))
    }

    /// The map-key view of the same bytes.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8; 16] {
        // SAFETY: same size, and [u8; 16] has no alignment or validity requirement.
        unsafe { &*(self as *const Self as *const [u8; 16]) }
    }

    /// A copy as bytes (event records carry the address as `[u8; 16]`).
    #[inline(always)]
    pub fn to_bytes(self) -> [u8; 16] {
        *self.bytes()
    }
}

/// A packet's flow identity, oriented source → destination.
pub struct Packet {
    pub protocol: u8,
    pub src_addr: Addr,
    pub dst_addr: Addr,
    /// Ports for TCP/UDP/SCTP. For ICMP echo the identifier stands on the requester's side:
    /// source port of a request, destination port of a reply, so a reply hits its request's
    /// flow entry. 0 otherwise.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP type for ICMP and ICMPv6, else 0.
    pub icmp_type: u8,
    /// A TCP packet that cannot open a connection (no SYN, or SYN+ACK).
    pub tcp_midstream: bool,
    /// An ICMP echo request or reply, or a L4 protocol with ports: worth a flow entry.
    pub trackable: bool,
}

impl Packet {
    /// An ICMP or ICMPv6 echo request (first fragment).
    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        matches!(
            (self.protocol, self.icmp_type),
            (IPPROTO_ICMP, ICMP_ECHO_REQUEST) | (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST)
        )
    }
}

/// A header word the program can load: u8, u16 or u32 (network order, as in the packet).
pub trait Word: Copy {}
impl Word for u8 {}
impl Word for u16 {}
impl Word for u32 {}

/// Where a program reads headers from; generic so each program's parser is monomorphized.
pub trait Headers {
    /// `skb->protocol`: the ethertype, host order.
    fn ethertype(&self) -> u16;
    /// The word at `offset` from the start of the network header, as stored (network order).
    fn load<T: Word>(&self, offset: usize) -> Result<T, i64>;
}

impl Headers for SkBuffContext {
    #[inline(always)]
    fn ethertype(&self) -> u16 {
        u16::from_be(self.skb.protocol() as u16)
    }

    #[inline(always)]
    fn load<T: Word>(&self, offset: usize) -> Result<T, i64> {
        self.skb.load(offset)
    }
}

/// Bytes needed from the network header on for the common case: a 20-byte IPv4 header or a
/// 40-byte IPv6 header, then the ports; for TCP, up to the flags.
const LINEAR_V4: usize = 20 + 4;
const LINEAR_V6: usize = 40 + 4;
const TCP_FLAGS: usize = 13;

/// The common case straight from the skb's linear data, with one bound check (two for TCP): IPv4 without
/// options or IPv6 without extension headers, carrying TCP, UDP or SCTP, not a later
/// fragment, headers already pulled into the linear area (as the stack has them when
/// cgroup_skb runs). Anything else is `None`, for `parse`.
#[inline(always)]
pub fn parse_linear(ctx: &SkBuffContext) -> Option<Packet> {
    // SAFETY: reading the program's own context fields.
    let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    let ethertype = ctx.ethertype();
    let (protocol, src_addr, dst_addr, l4) = if ethertype == ETH_P_IP {
        if data + LINEAR_V4 > end {
            return None;
        }
        // SAFETY: LINEAR_V4 bytes from `data` are in the packet (checked above, and by the
        // verifier); every read below is within them.
        let (version_ihl, frag, protocol, src, dst) = unsafe {
            (
                *(data as *const u8),
                *((data + 6) as *const u16),
                *((data + 9) as *const u8),
                *((data + 12) as *const u32),
                *((data + 16) as *const u32),
            )
        };
        if version_ihl != 0x45 || u16::from_be(frag) & 0x1fff != 0 {
            return None;
        }
        (protocol, Addr::v4(src), Addr::v4(dst), data + 20)
    } else if ethertype == ETH_P_IPV6 {
        if data + LINEAR_V6 > end {
            return None;
        }
        let word = |offset: usize| -> u32 {
            // SAFETY: as above, within LINEAR_V6 bytes.
            unsafe { *((data + offset) as *const u32) }
        };
        // SAFETY: as above.
        let next = unsafe { *((data + 6) as *const u8) };
        let src = Addr([word(8), word(12), word(16), word(20)]);
        let dst = Addr([word(24), word(28), word(32), word(36)]);
        (next, src, dst, data + 40)
    } else {
        return None;
    };
    if !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return None;
    }
    // SAFETY: the ports are within the checked length.
    let (src_port, dst_port) = unsafe { (*(l4 as *const u16), *((l4 + 2) as *const u16)) };
    let mut tcp_midstream = false;
    if protocol == IPPROTO_TCP {
        if l4 + TCP_FLAGS + 1 > end {
            return None;
        }
        // SAFETY: checked just above.
        let flags = unsafe { *((l4 + TCP_FLAGS) as *const u8) };
        tcp_midstream = flags & 0x02 == 0 || flags & 0x10 != 0;
    }
    Some(Packet {
        protocol,
        src_addr,
        dst_addr,
        src_port: u16::from_be(src_port),
        dst_port: u16::from_be(dst_port),
        icmp_type: 0,
        tcp_midstream,
        trackable: true,
    })
}

pub enum Parsed {
    Ip(Packet),
    /// Not IPv4 or IPv6 (never seen on cgroup_skb in practice): let it through.
    NotIp,
}

#[inline(always)]
fn load_addr<H: Headers>(ctx: &H, offset: usize) -> Result<Addr, i64> {
    Ok(Addr([ctx.load(offset)?, ctx.load(offset + 4)?, ctx.load(offset + 8)?, ctx.load(offset + 12)?]))
}

#[inline(always)]
pub fn parse<H: Headers>(ctx: &H) -> Result<Parsed, i64> {
    let ethertype = ctx.ethertype();
    let mut packet = Packet {
        protocol: 0,
        src_addr: Addr::ZERO,
        dst_addr: Addr::ZERO,
        src_port: 0,
        dst_port: 0,
        icmp_type: 0,
        tcp_midstream: false,
        trackable: false,
    };
    let (l4_offset, first_fragment) = if ethertype == ETH_P_IP {
        let version_ihl: u8 = ctx.load(0)?;
        let frag: u16 = u16::from_be(ctx.load(6)?);
        packet.protocol = ctx.load(9)?;
        packet.src_addr = Addr::v4(ctx.load(12)?);
        packet.dst_addr = Addr::v4(ctx.load(16)?);
        ((version_ihl & 0x0f) as usize * 4, frag & 0x1fff == 0)
    } else if ethertype == ETH_P_IPV6 {
        packet.src_addr = load_addr(ctx, 8)?;
        packet.dst_addr = load_addr(ctx, 24)?;
        let next: u8 = ctx.load(6)?;
        let (protocol, offset, first) = skip_ipv6_extensions(ctx, next)?;
        packet.protocol = protocol;
        (offset, first)
    } else {
        return Ok(Parsed::NotIp);
    };
    if !first_fragment {
        return Ok(Parsed::Ip(packet));
    }
    match packet.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            packet.src_port = u16::from_be(ctx.load(l4_offset)?);
            packet.dst_port = u16::from_be(ctx.load(l4_offset + 2)?);
            packet.trackable = true;
            if packet.protocol == IPPROTO_TCP {
                let flags: u8 = ctx.load(l4_offset + 13)?;
                let syn = flags & 0x02 != 0;
                let ack = flags & 0x10 != 0;
                packet.tcp_midstream = !syn || ack;
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            packet.icmp_type = ctx.load(l4_offset)?;
            let echo = matches!(
                (packet.protocol, packet.icmp_type),
                (IPPROTO_ICMP, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)
                    | (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            );
            if echo {
                let id = u16::from_be(ctx.load(l4_offset + 4)?);
                let reply = matches!(packet.icmp_type, ICMP_ECHO_REPLY | ICMPV6_ECHO_REPLY);
                if reply {
                    packet.dst_port = id;
                } else {
                    packet.src_port = id;
                }
                packet.trackable = true;
            }
        }
        _ => {}
    }
    Ok(Parsed::Ip(packet))
}

/// Follows up to four IPv6 extension headers. Returns the upper-layer protocol, its offset
/// and whether this is the first fragment (the only one that carries ports).
#[inline(always)]
pub fn skip_ipv6_extensions<H: Headers>(ctx: &H, first: u8) -> Result<(u8, usize, bool), i64> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut next = first;
    let mut offset = 40usize;
    let mut first_fragment = true;
    for _ in 0..4 {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let (kind, len): (u8, u8) = (ctx.load(offset)?, ctx.load(offset + 1)?);
                next = kind;
                offset += (len as usize + 1) * 8;
            }
            FRAGMENT => {
                next = ctx.load(offset)?;
                first_fragment = u16::from_be(ctx.load(offset + 2)?) & 0xfff8 == 0;
                offset += 8;
            }
            AUTH => {
                let (kind, len): (u8, u8) = (ctx.load(offset)?, ctx.load(offset + 1)?);
                next = kind;
                offset += (len as usize + 2) * 4;
            }
            _ => break,
        }
    }
    Ok((next, offset, first_fragment))
}

/// IPv6 neighbour discovery and multicast listener messages: link plumbing, never policy.
#[inline(always)]
pub fn is_ipv6_link_control(packet: &Packet) -> bool {
    packet.protocol == IPPROTO_ICMPV6 && matches!(packet.icmp_type, 130..=137 | 143)
}
