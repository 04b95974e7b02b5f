//! The flow table's layout: a set-associative table in a BPF array (`FLOWS`), shared by the
//! programs that read and write it and the agent that counts it.
//!
//! A flow's key hashes to one set of `WAYS` consecutive 64-byte slots (one cache line each in
//! the page-aligned, mmapable array). A lookup reads at most those lines, an insert writes
//! one; where the kernel's LRU hash walked a bucket array, an element and its list nodes, and
//! locked the bucket to insert (docs/design.md, "Flow table and revocation").
//!
//! Slots are written without a lock, so a reader may see a slot half-written by another CPU.
//! Each slot therefore carries `check`, a mix of its key and state: a slot counts only where
//! the check matches its contents, so a torn slot (words of two flows) reads as empty and its
//! packet is decided afresh — never as a flow that was not admitted.

use crate::maps::{capacity, FlowKey, FlowState};

/// Slots per set.
pub const WAYS: u32 = 4;
/// Sets in `FLOWS`: its capacity in slots, over `WAYS`.
pub const SETS: u32 = capacity::FLOWS / WAYS;
/// `FlowState::used` counts jiffies in units of 2^USED_SHIFT (64 jiffies: 64–256 ms).
pub const USED_SHIFT: u32 = 6;
/// Bits of a key's hash that pick its set.
const SET_BITS: u32 = SETS.trailing_zeros();

/// One slot of `FLOWS`: a flow admitted under some generation, or empty (`check` does not
/// match: zero, or a torn write).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub state: FlowState,
    /// `check_of(key, state)` while the slot holds that flow.
    pub check: u64,
}

#[inline(always)]
const fn key_words(key: &FlowKey) -> [u64; 4] {
    let a = &key.remote_addr;
    [
        key.cgroup,
        u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        key.local_port as u64 | (key.remote_port as u64) << 16 | (key.protocol as u64) << 32,
    ]
}

/// The key's hash; its top bits pick the set.
#[inline(always)]
pub const fn hash(key: &FlowKey) -> u64 {
    let w = key_words(key);
    (w[0] ^ w[1].rotate_left(17) ^ w[2].rotate_left(31) ^ w[3].rotate_left(47)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Index of the first slot of the key's set (`hash`).
#[inline(always)]
pub const fn first_slot(hash: u64) -> u32 {
    ((hash >> (64 - SET_BITS)) as u32) * WAYS
}

/// The way an insert takes when every way of the set is live and none is older: spread by the
/// hash, so flows that share a set do not all evict the same one.
#[inline(always)]
pub const fn fallback_way(hash: u64) -> u32 {
    (hash >> 8) as u32 & (WAYS - 1)
}

#[inline(always)]
const fn mix(h: u64, word: u64) -> u64 {
    let h = (h ^ word).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^ (h >> 29)
}

/// The slot's check for a flow: every word of key and state but `used` (a recency hint that
/// readers refresh in place). Never zero, so a zeroed slot is empty. Three lanes of two words
/// each, mixed apart and then together: the same nonlinear mix of every word as one chain, but
/// three multiplies deep instead of seven: the longest chain of arithmetic in an established
/// packet's lookup (the lanes run side by side in the CPU).
#[inline(always)]
pub const fn check_of(key: &FlowKey, state: &FlowState) -> u64 {
    let w = key_words(key);
    // The key's last word uses its low 40 bits (ports and protocol): origin and reason fit above.
    let flags = (state.origin as u64) << 48 | (state.reason as u64) << 56;
    let a = mix(mix(0x243F_6A88_85A3_08D3, w[0]), w[1]);
    let b = mix(mix(0x1319_8A2E_0370_7344, w[2]), w[3] | flags);
    let c = mix(mix(0xA409_3822_299F_31D0, state.generation), state.local_tenant);
    mix(a ^ b.rotate_left(21), c.rotate_left(42)) | 1
}

impl FlowSlot {
    /// The slot holds a flow, whole.
    #[inline(always)]
    pub const fn is_live(&self) -> bool {
        self.check == check_of(&self.key, &self.state)
    }

    /// A filled slot for `key`.
    #[inline(always)]
    pub const fn new(key: FlowKey, state: FlowState) -> Self {
        Self { key, state, check: check_of(&key, &state) }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and arrays of integers only, no implicit padding (size below).
unsafe impl aya::Pod for FlowSlot {}

const _: () = {
    assert!(core::mem::size_of::<FlowSlot>() == 64);
    assert!(SETS.is_power_of_two());
    assert!(WAYS.is_power_of_two());
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    fn key(cgroup: u64, addr: u8, local_port: u16, remote_port: u16) -> FlowKey {
        let mut remote_addr = [0u8; 16];
        remote_addr[10] = 0xff;
        remote_addr[11] = 0xff;
        remote_addr[12..].copy_from_slice(&[10, 0, 0, addr]);
        FlowKey { cgroup, remote_addr, local_port, remote_port, protocol: 6, _pad: [0; 3] }
    }

    fn state(generation: u64, tenant: u64) -> FlowState {
        FlowState { generation, local_tenant: tenant, origin: 1, reason: 3, _pad: [0; 2], used: 0 }
    }

    #[test]
    fn a_written_slot_is_live_and_a_zeroed_one_is_not() {
        assert!(FlowSlot::new(key(1, 2, 40000, 80), state(5, 7)).is_live());
        assert!(!FlowSlot::default().is_live());
    }

    #[test]
    fn the_recency_hint_is_outside_the_check() {
        let mut slot = FlowSlot::new(key(1, 2, 40000, 80), state(5, 7));
        slot.state.used = 12345;
        assert!(slot.is_live());
    }

    /// Every mix of two flows' words, as a reader may see a slot one CPU rewrites while
    /// another reads it (word by word, each 8-byte word whole): none passes for a flow.
    #[test]
    fn a_slot_torn_between_two_flows_is_never_live() {
        let a = FlowSlot::new(key(1, 2, 40000, 80), state(5, 7));
        let b = FlowSlot::new(key(9, 3, 40001, 443), state(6, 8));
        let words = |slot: &FlowSlot| -> [u64; 8] {
            // SAFETY: FlowSlot is 64 bytes of plain data.
            unsafe { core::mem::transmute(*slot) }
        };
        let (wa, wb) = (words(&a), words(&b));
        for mask in 1u32..255 {
            let mut torn = [0u64; 8];
            for (i, word) in torn.iter_mut().enumerate() {
                *word = if mask & (1 << i) != 0 { wb[i] } else { wa[i] };
            }
            // SAFETY: as above.
            let slot: FlowSlot = unsafe { core::mem::transmute(torn) };
            let whole = slot == a || slot == b;
            assert_eq!(slot.is_live(), whole, "words from b: {mask:08b}");
        }
    }

    #[test]
    fn any_field_changed_fails_the_check() {
        let slot = FlowSlot::new(key(1, 2, 40000, 80), state(5, 7));
        let changes: [fn(&mut FlowSlot); 9] = [
            |s| s.key.cgroup ^= 1,
            |s| s.key.remote_addr[15] ^= 1,
            |s| s.key.local_port ^= 1,
            |s| s.key.remote_port ^= 1,
            |s| s.key.protocol = 17,
            |s| s.state.generation += 1,
            |s| s.state.local_tenant ^= 1,
            |s| s.state.origin = 2,
            |s| s.state.reason = 4,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = slot;
            change(&mut changed);
            assert!(!changed.is_live(), "change {i}");
        }
    }

    /// A node's flows spread over the sets: one pod's connections to one server (ports
    /// varying) and many pods' to many peers alike.
    #[test]
    fn flows_spread_evenly_over_the_sets() {
        let mut flows = Vec::new();
        for port in 0..100_000u32 {
            flows.push(key(1, 2, 32768 + (port % 28232) as u16, 80 + (port / 28232) as u16));
        }
        for pod in 0..1_000u64 {
            for peer in 0..100u8 {
                flows.push(key(4096 + pod * 7, peer, 40000, 443));
            }
        }
        let mut per_set: HashMap<u32, u32> = HashMap::new();
        for flow in &flows {
            let first = first_slot(hash(flow));
            assert!(first.is_multiple_of(WAYS) && first < capacity::FLOWS);
            *per_set.entry(first / WAYS).or_default() += 1;
        }
        // 200,000 flows over 65,536 sets: ~3 a set; a fair hash leaves few sets much fuller.
        let overfull = per_set.values().filter(|n| **n > 10).count();
        assert!(overfull < 50, "{overfull} sets hold more than 10 flows");
        assert!(per_set.len() > 60_000, "only {} of {SETS} sets used", per_set.len());
    }
}
