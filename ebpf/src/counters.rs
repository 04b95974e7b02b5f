//! Verdict counters: per tenant, direction, verdict and reason, summed over CPUs by the agent.
//!
//! Established packets go to `COUNTER_SLOTS` (a per-CPU array indexed by the tenant's slot,
//! which the verifier turns into a few instructions); everything else, and a slot's counts
//! when another tenant takes it over, to the `COUNTERS` per-CPU hash.

use moat_common::{
    maps::{counter_slot, Counter, CounterKey, SlotCounter, VERDICT_ALLOW, VERDICT_DENY},
    verdict::Reason,
};

use crate::maps::{COUNTERS, COUNTER_SLOTS};

/// One established packet of `tenant`'s flow.
#[inline(always)]
pub fn established(tenant: u64, direction: u8, bytes: u64) {
    let Some(slot) = COUNTER_SLOTS.get_ptr_mut(counter_slot(tenant, direction)) else {
        return;
    };
    // SAFETY: this CPU's value; a program that interrupts this one (softirq) may update it
    // too, as with any per-CPU counter, and finishes before this one resumes.
    let slot = unsafe { &mut *slot };
    if slot.tenant != tenant {
        if slot.packets != 0 {
            add(slot.tenant, direction, Reason::Established, slot.packets, slot.bytes);
        }
        *slot = SlotCounter {
            tenant,
            packets: 0,
            bytes: 0,
        };
    }
    slot.packets += 1;
    slot.bytes += bytes;
}

/// One packet with verdict `reason`.
#[inline(always)]
pub fn count(tenant: u64, direction: u8, reason: Reason, bytes: u64) {
    add(tenant, direction, reason, 1, bytes);
}

#[inline(always)]
fn add(tenant: u64, direction: u8, reason: Reason, packets: u64, bytes: u64) {
    let key = CounterKey {
        tenant,
        direction,
        verdict: if reason.is_allow() { VERDICT_ALLOW } else { VERDICT_DENY },
        reason: reason as u8,
        _pad: [0; 5],
    };
    if let Some(counter) = COUNTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, so no other CPU races this one.
        unsafe {
            (*counter).packets += packets;
            (*counter).bytes += bytes;
        }
    } else {
        let _ = COUNTERS.insert(&key, &Counter { packets, bytes }, 0);
    }
}
