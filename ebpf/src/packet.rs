//! Reads the addresses, protocol and ports of a packet, from the network header on: where a
//! cgroup_skb program's data starts, or (tc) relative to it.

use aya_ebpf::programs::SkBuffContext;
use moat_common::{
    maps::ipv4_mapped, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// A packet's flow identity, oriented source → destination.
pub struct Packet {
    pub protocol: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
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

/// Where a program reads headers from; generic so each program's parser is monomorphized
/// and the cgroup_skb path stays a plain `bpf_skb_load_bytes`.
pub trait Headers {
    /// `skb->protocol`: the ethertype, host order.
    fn ethertype(&self) -> u16;
    /// `size_of::<T>()` bytes at `offset` from the start of the network header.
    fn load<T>(&self, offset: usize) -> Result<T, i64>;
}

impl Headers for SkBuffContext {
    #[inline(always)]
    fn ethertype(&self) -> u16 {
        u16::from_be(self.skb.protocol() as u16)
    }

    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        self.skb.load(offset)
    }
}

pub enum Parsed {
    Ip(Packet),
    /// Not IPv4 or IPv6 (never seen on cgroup_skb in practice): let it through.
    NotIp,
}

#[inline(always)]
pub fn parse<H: Headers>(ctx: &H) -> Result<Parsed, i64> {
    let ethertype = ctx.ethertype();
    let mut packet = Packet {
        protocol: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
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
        packet.src_addr = ipv4_mapped(ctx.load(12)?);
        packet.dst_addr = ipv4_mapped(ctx.load(16)?);
        ((version_ihl & 0x0f) as usize * 4, frag & 0x1fff == 0)
    } else if ethertype == ETH_P_IPV6 {
        packet.src_addr = ctx.load(8)?;
        packet.dst_addr = ctx.load(24)?;
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
fn skip_ipv6_extensions<H: Headers>(ctx: &H, first: u8) -> Result<(u8, usize, bool), i64> {
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
                let header: [u8; 2] = ctx.load(offset)?;
                next = header[0];
                offset += (header[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let header: [u8; 4] = ctx.load(offset)?;
                next = header[0];
                first_fragment = u16::from_be_bytes([header[2], header[3]]) & 0xfff8 == 0;
                offset += 8;
            }
            AUTH => {
                let header: [u8; 2] = ctx.load(offset)?;
                next = header[0];
                offset += (header[1] as usize + 2) * 4;
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
