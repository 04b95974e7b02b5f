//! Prefix arithmetic for the LPM keys: port ranges as prefixes, masking, containment.

use moat_common::maps::{PolicyMatch, POLICY_SET_IDENTITY_BITS};

/// Prefix length of a key that matches every port of one protocol.
pub const PROTOCOL_BITS: u32 = POLICY_SET_IDENTITY_BITS + 8;

/// `start..=end` as the fewest (port, prefix bits within the 16 port bits) blocks.
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let (mut low, high) = (u32::from(start), u32::from(end));
    while low <= high {
        let mut size_bits = 0u32;
        // Grow the block while it stays aligned and inside the range.
        while size_bits < 16 {
            let next = 1u32 << (size_bits + 1);
            if low % next != 0 || low + next - 1 > high {
                break;
            }
            size_bits += 1;
        }
        blocks.push((low as u16, 16 - size_bits));
        low += 1 << size_bits;
    }
    blocks
}

/// Clears every bit of `key` beyond `prefix_len`, as the kernel's trie ignores them.
pub fn mask(key: &PolicyMatch, prefix_len: u32) -> PolicyMatch {
    let mut bytes = to_bytes(key);
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bits = prefix_len.saturating_sub(i as u32 * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    from_bytes(&bytes)
}

fn to_bytes(key: &PolicyMatch) -> [u8; 19] {
    let mut bytes = [0u8; 19];
    bytes[..8].copy_from_slice(&key.set.to_ne_bytes());
    bytes[8..16].copy_from_slice(&key.identity.to_ne_bytes());
    bytes[16] = key.protocol;
    bytes[17..19].copy_from_slice(&key.port);
    bytes
}

fn from_bytes(bytes: &[u8; 19]) -> PolicyMatch {
    let mut set = [0u8; 8];
    let mut identity = [0u8; 8];
    set.copy_from_slice(&bytes[..8]);
    identity.copy_from_slice(&bytes[8..16]);
    PolicyMatch {
        set: u64::from_ne_bytes(set),
        identity: u64::from_ne_bytes(identity),
        protocol: bytes[16],
        port: [bytes[17], bytes[18]],
        _pad: [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u32)]) -> Vec<u16> {
        let mut ports: Vec<u16> = blocks
            .iter()
            .flat_map(|(start, bits)| {
                let size = 1u32 << (16 - bits);
                (u32::from(*start)..u32::from(*start) + size).map(|p| p as u16)
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn ranges_become_exact_prefix_covers() {
        for (start, end) in [(80, 80), (1000, 2000), (0, 65535), (1, 65535), (32768, 32768), (65535, 65535), (1023, 1025)] {
            let blocks = port_blocks(start, end);
            assert_eq!(covered(&blocks), (start..=end).collect::<Vec<_>>(), "{start}..={end}");
            assert!(blocks.len() <= 32);
        }
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn masking_clears_bits_past_the_prefix() {
        let key = PolicyMatch::new(7, 9, 6, 0x1234);
        assert_eq!(mask(&key, PROTOCOL_BITS), PolicyMatch::new(7, 9, 6, 0));
        assert_eq!(mask(&key, PROTOCOL_BITS + 8), PolicyMatch::new(7, 9, 6, 0x1200));
        assert_eq!(mask(&key, POLICY_SET_IDENTITY_BITS), PolicyMatch::new(7, 9, 0, 0));
    }
}
