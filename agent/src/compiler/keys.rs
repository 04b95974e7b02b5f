//! Addresses and prefixes in the kernel maps' key form.

use std::net::IpAddr;

use moat_common::maps::NetworkKey;

use crate::config::Cidr;

/// The 16-byte key form of an address (IPv4 mapped into IPv6).
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => moat_common::maps::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn network_key(cidr: &Cidr) -> NetworkKey {
    let prefix_len = match cidr.addr {
        IpAddr::V4(_) => u32::from(cidr.prefix_len) + 96,
        IpAddr::V6(_) => u32::from(cidr.prefix_len),
    };
    // Host bits are cleared so equal prefixes written differently are one key.
    let mut addr = mapped(cidr.addr);
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = prefix_len.saturating_sub(i as u32 * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    NetworkKey { prefix_len, addr }
}
