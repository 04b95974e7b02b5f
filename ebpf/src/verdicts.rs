//! A per-CPU cache of allowed verdicts, so one decision serves every flow with the same
//! inputs: the connect() hook's decision serves the SYN it sends (the same CPU, in the same
//! system call), and a client's second connection to a service is admitted without
//! endpoint or policy lookups.
//!
//! A verdict depends only on the local cgroup, the remote address, the protocol, the port
//! on the side that accepts the flow, the side that opens it — and on the maps, which only
//! change with a new `Settings::generation`. An entry holds all of these and matches only
//! when every one is equal, under the current generation. Only allowed verdicts are cached:
//! a denial is decided (and reported) in full every time.
//!
//! Direct-mapped and per CPU: no locks, no allocation, an entry is overwritten by the next
//! verdict that maps to its index. A program interrupted on its CPU (softirq) by another
//! moat program that writes the same entry could read or leave a mix of two entries; the
//! `check` word, a hash of all the others written last, makes such an entry miss.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use moat_common::verdict::Reason;

use crate::packet::Addr;

const ENTRIES: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedVerdict {
    cgroup: u64,
    remote: Addr,
    /// Port, protocol, origin and reason (`meta`).
    meta: u64,
    generation: u64,
    local_tenant: u64,
    check: u64,
    _pad: u64,
}

#[map]
static VERDICTS: PerCpuArray<CachedVerdict> = PerCpuArray::with_max_entries(ENTRIES, 0);

/// What a verdict is looked up by.
pub struct Inputs<'a> {
    pub cgroup: u64,
    pub remote: &'a Addr,
    pub protocol: u8,
    /// The port on the side that accepts the flow: the remote port of an outbound flow, the
    /// local port of an inbound one.
    pub port: u16,
    pub origin: u8,
}

impl Inputs<'_> {
    #[inline(always)]
    fn meta(&self, reason: u8) -> u64 {
        self.port as u64 | (self.protocol as u64) << 16 | (self.origin as u64) << 24 | (reason as u64) << 32
    }

    #[inline(always)]
    fn key_hash(&self) -> u64 {
        let words = &self.remote.0;
        let high = ((words[0] as u64) << 32) | words[1] as u64;
        let low = ((words[2] as u64) << 32) | words[3] as u64;
        mix(mix(mix(self.cgroup ^ high) ^ low) ^ self.meta(0))
    }
}

/// A cached allowed verdict: the reason and the local end's tenant.
#[inline(always)]
pub fn get(inputs: &Inputs, generation: u64) -> Option<(Reason, u64)> {
    let key_hash = inputs.key_hash();
    let entry = VERDICTS.get(key_hash as u32 & (ENTRIES - 1))?;
    let entry = *entry;
    let reason = (entry.meta >> 32) as u8;
    let matches = entry.cgroup == inputs.cgroup
        && entry.remote.0 == inputs.remote.0
        && entry.meta == inputs.meta(reason)
        && entry.generation == generation
        && entry.check == check(key_hash, &entry);
    if !matches {
        return None;
    }
    // Only allowed verdicts are stored, but a torn read must not make up one.
    let reason = Reason::from_u8(reason).filter(|reason| reason.is_allow())?;
    Some((reason, entry.local_tenant))
}

/// Stores an allowed verdict.
#[inline(always)]
pub fn put(inputs: &Inputs, generation: u64, reason: Reason, local_tenant: u64) {
    if !reason.is_allow() {
        return;
    }
    let key_hash = inputs.key_hash();
    let Some(slot) = VERDICTS.get_ptr_mut(key_hash as u32 & (ENTRIES - 1)) else {
        return;
    };
    let mut entry = CachedVerdict {
        cgroup: inputs.cgroup,
        remote: *inputs.remote,
        meta: inputs.meta(reason as u8),
        generation,
        local_tenant,
        check: 0,
        _pad: 0,
    };
    entry.check = check(key_hash, &entry);
    // SAFETY: this CPU's entry; see the module comment for interrupted writers.
    unsafe { *slot = entry };
}

#[inline(always)]
fn check(key_hash: u64, entry: &CachedVerdict) -> u64 {
    mix(mix(key_hash ^ entry.meta) ^ entry.generation ^ entry.local_tenant.rotate_left(29))
}

/// splitmix64's finalizer: every input bit moves about half the output bits.
#[inline(always)]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
