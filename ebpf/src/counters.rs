//! Verdict counters: per tenant, direction, verdict and reason, summed over CPUs by the agent.
//!
//! Every packet is counted in a slot of `COUNTER_SLOTS`, a per-CPU array the verifier turns
//! into a few instructions: established packets by their tenant's slot, other verdicts by
//! their key's hash. A slot's counts go to the `COUNTERS` per-CPU hash only when another key
//! takes the slot over.

use moat_common::{
    maps::{counter_slot, decision_slot, Counter, CounterKey, SlotCounter, VERDICT_ALLOW, VERDICT_DENY},
    verdict::Reason,
};

use crate::maps::{COUNTERS, COUNTER_SLOTS};

/// One established packet of `tenant`'s flow.
#[inline(always)]
pub fn established(tenant: u64, direction: u8, bytes: u64) {
    add_to_slot(counter_slot(tenant, direction), &key(tenant, direction, Reason::Established), bytes);
}

/// One packet with verdict `reason`.
#[inline(always)]
pub fn count(tenant: u64, direction: u8, reason: Reason, bytes: u64) {
    let key = key(tenant, direction, reason);
    add_to_slot(decision_slot(&key), &key, bytes);
}

#[inline(always)]
fn key(tenant: u64, direction: u8, reason: Reason) -> CounterKey {
    CounterKey {
        tenant,
        direction,
        verdict: if reason.is_allow() { VERDICT_ALLOW } else { VERDICT_DENY },
        reason: reason as u8,
        _pad: [0; 5],
    }
}

#[inline(always)]
fn add_to_slot(index: u32, key: &CounterKey, bytes: u64) {
    let Some(slot) = COUNTER_SLOTS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: this CPU's value; a program that interrupts this one (softirq) may update it
    // too, as with any per-CPU counter, and finishes before this one resumes.
    let slot = unsafe { &mut *slot };
    if words(&slot.key) != words(key) {
        if slot.packets != 0 {
            add_to_map(&slot.key, slot.packets, slot.bytes);
        }
        *slot = SlotCounter { key: *key, packets: 0, bytes: 0 };
    }
    slot.packets += 1;
    slot.bytes += bytes;
}

/// A key as two words, compared with two branches where the derived comparison tests each
/// byte field apart (keys are built with their padding zero).
#[inline(always)]
fn words(key: &CounterKey) -> [u64; 2] {
    // SAFETY: CounterKey is 16 bytes of plain data, 8-byte aligned.
    unsafe { core::ptr::read(key as *const CounterKey as *const [u64; 2]) }
}

#[inline(always)]
fn add_to_map(key: &CounterKey, packets: u64, bytes: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, so no other CPU races this one.
        unsafe {
            (*counter).packets += packets;
            (*counter).bytes += bytes;
        }
    } else {
        let _ = COUNTERS.insert(key, &Counter { packets, bytes }, 0);
    }
}
