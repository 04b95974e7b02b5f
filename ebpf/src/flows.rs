//! The flow table: one set lookup for an established packet, generation-based revocation.
//! `FLOWS` is a set-associative table in an array (layout and torn-write check in
//! `moat_common::flow_table`; docs/design.md, "Flow table and revocation").

use aya_ebpf::helpers::generated::bpf_jiffies64;
use moat_common::{
    flow_table::{check_of, fallback_way, first_slot, hash, FlowSlot, USED_SHIFT, WAYS},
    maps::{FlowKey, FlowState, Settings},
    verdict::Reason,
};

use crate::ends::Ends;
use crate::maps::FLOWS;
use crate::verdicts;

/// A flow admitted under an older generation: its slot and the side that opened it, as
/// read (and checked) by the lookup.
#[derive(Clone, Copy)]
pub struct StaleFlow {
    slot: *mut FlowSlot,
    origin: u8,
}

/// What the flow table holds for a packet's flow.
pub enum Tracked {
    /// Admitted under the current generation: the local tenant, for the counters.
    Current(u64),
    /// Admitted under an older generation: to be re-decided (`redecide`) before use.
    Stale(StaleFlow),
    Missing,
}

/// The recency hint for now (`FlowState::used`).
#[inline(always)]
fn now() -> u32 {
    // SAFETY: no arguments; the verifier inlines it as a load of jiffies.
    (unsafe { bpf_jiffies64() } >> USED_SHIFT) as u32
}

#[inline(always)]
fn slot(index: u32) -> Option<*mut FlowSlot> {
    FLOWS.get_ptr_mut(index)
}

/// A key as four words (padding included: keys are built with it zero).
#[inline(always)]
fn words(key: *const FlowKey) -> [u64; 4] {
    // SAFETY: FlowKey is 32 bytes of plain data, 8-byte aligned; for a slot, a pointer into
    // the array's value (another CPU may write it meanwhile: the check catches that).
    unsafe { core::ptr::read_volatile(key as *const [u64; 4]) }
}

#[inline(always)]
fn same_key(slot: *const FlowSlot, key: &[u64; 4]) -> bool {
    // SAFETY: as in `words`.
    let held = words(unsafe { &(*slot).key });
    // One comparison, not four: each branch is another path for the verifier to walk.
    ((held[0] ^ key[0]) | (held[1] ^ key[1]) | (held[2] ^ key[2]) | (held[3] ^ key[3])) == 0
}

/// The slot's state and check, each read once.
#[inline(always)]
fn read_state(slot: *const FlowSlot) -> (FlowState, u64) {
    // SAFETY: a pointer into the array's value.
    unsafe { (core::ptr::read_volatile(&(*slot).state), core::ptr::read_volatile(&(*slot).check)) }
}

/// No slot (`find_slot`).
const NO_SLOT: u32 = u32::MAX;

/// Index of the slot of the key's set that holds the key, or `NO_SLOT`.
#[inline(always)]
fn find_slot(key: &FlowKey) -> u32 {
    let wanted = words(key);
    let first = first_slot(hash(key));
    let mut way = 0;
    while way < WAYS {
        let Some(ptr) = slot(first + way) else { return NO_SLOT };
        if same_key(ptr, &wanted) {
            return first + way;
        }
        way += 1;
    }
    NO_SLOT
}

/// The one lookup an established packet makes: the ways of the key's set, the first holding
/// the key, counted only if whole (its check matches what was read). `generation` is
/// `Settings::generation` as read once at the start of the program run: everything the run
/// decides is recorded under the generation it was decided under, so a change armed mid-run
/// still re-decides it.
#[inline(always)]
pub fn lookup(key: &FlowKey, generation: u64) -> Tracked {
    let Some(ptr) = slot(find_slot(key)) else { return Tracked::Missing };
    let (state, check) = read_state(ptr);
    if check != check_of(key, &state) {
        return Tracked::Missing;
    }
    if state.generation != generation {
        return Tracked::Stale(StaleFlow { slot: ptr, origin: state.origin });
    }
    let now = now();
    if state.used != now {
        // SAFETY: a pointer into the array's value; `used` is outside the check.
        unsafe { (*ptr).state.used = now };
    }
    Tracked::Current(state.local_tenant)
}

/// The side that opened a stale flow.
#[inline(always)]
pub fn origin_of(stale: StaleFlow) -> u8 {
    stale.origin
}

/// The side that opened a stale flow, read again from its slot for the report after the
/// decision. The same value as `origin_of` unless another CPU has since reused the slot, when
/// at worst the report looks for its ClusterNetworkPolicy rule on the wrong side. Read again
/// because the verifier knows nothing of a value read from a map: carried from before the
/// decision, which branches on it, the verifier would walk every path after it once for each
/// origin, past its limit in the deciders.
#[inline(always)]
pub fn origin_to_report(stale: StaleFlow) -> u8 {
    // SAFETY: from `lookup` in this program run; a read of one byte.
    unsafe { core::ptr::read_volatile(&(*stale.slot).state.origin) }
}

/// Marks a stale flow admitted under the current generation. The check is computed from
/// `key`, not from the slot: should another CPU have put a different flow there since the
/// lookup, the slot reads as empty rather than as that flow with this one's state.
#[inline(always)]
pub fn renew(stale: StaleFlow, key: &FlowKey, generation: u64, reason: Reason, local_tenant: u64) {
    let state = FlowState { generation, local_tenant, origin: stale.origin, reason: reason as u8, _pad: [0; 2], used: now() };
    // SAFETY: from `lookup` in this program run.
    unsafe {
        (*stale.slot).state = state;
        (*stale.slot).check = check_of(key, &state);
    }
}

/// Re-decides a flow admitted under an older generation in its original direction, and
/// either renews it or removes it, so a revoked flow is cut on its next packet.
#[inline(always)]
pub fn redecide(stale: StaleFlow, key: &FlowKey, ends: &Ends, settings: &Settings, generation: u64) -> Reason {
    let origin = stale.origin;
    let reason = ends.decide(settings, origin);
    if reason.is_allow() {
        verdicts::put(&ends.flow().verdict_inputs(origin), generation, reason, ends.local_tenant());
        renew(stale, key, generation, reason, ends.local_tenant());
    } else {
        // SAFETY: from `lookup` in this program run. Whatever the slot holds now reads as
        // empty: at worst another flow's next packet is decided afresh.
        unsafe { (*stale.slot).check = 0 };
    }
    reason
}

pub enum FlowLookup {
    /// Admitted under the current generation.
    Current,
    /// Admitted earlier; re-decided in its original direction (`ORIGIN_*`), allowed or cut.
    Redecided(Reason, u8),
    Missing,
}

/// `lookup`, then `redecide` for a stale entry.
#[inline(always)]
pub fn check_flow(key: &FlowKey, ends: &Ends, settings: &Settings) -> FlowLookup {
    let generation = settings.generation;
    match lookup(key, generation) {
        Tracked::Current(_) => FlowLookup::Current,
        Tracked::Stale(stale) => FlowLookup::Redecided(redecide(stale, key, ends, settings, generation), origin_to_report(stale)),
        Tracked::Missing => FlowLookup::Missing,
    }
}

/// Records an admitted flow in its set: in the way that holds the key already, else the
/// first way empty or removed, else the way least recently used
/// (`FlowState::used`). No lock: another CPU may write the same slot, and until one writer's
/// key, state and check are all there, the slot's words do not match its check.
#[inline(always)]
pub fn track(key: &FlowKey, generation: u64, origin: u8, reason: Reason, local_tenant: u64) {
    let now = now();
    let Some(ptr) = slot(victim_slot(key, now)) else { return };
    let state = FlowState { generation, local_tenant, origin, reason: reason as u8, _pad: [0; 2], used: now };
    // SAFETY: a pointer into the array's value.
    unsafe {
        (*ptr).key = *key;
        (*ptr).state = state;
        (*ptr).check = check_of(key, &state);
    }
}

/// The slot `track` writes (see there).
#[inline(always)]
fn victim_slot(key: &FlowKey, now: u32) -> u32 {
    let wanted = words(key);
    let h = hash(key);
    let first = first_slot(h);
    let mut victim = first + fallback_way(h);
    let mut oldest = 0u32;
    let mut way = 0;
    while way < WAYS {
        let Some(ptr) = slot(first + way) else { return NO_SLOT };
        let (state, check) = read_state(ptr);
        // An empty or removed slot reads a zero check. A torn one (rare: two CPUs wrote it at
        // once) is not looked for: its recency ages it out like any flow's, and recomputing
        // each way's check would cost every insert four mixes of seven words.
        if check == 0 || same_key(ptr, &wanted) {
            return first + way;
        }
        let age = now.wrapping_sub(state.used);
        if age > oldest {
            oldest = age;
            victim = first + way;
        }
        way += 1;
    }
    victim
}
