//! Event budgets before the ring buffer (`moat_common::budget`). Every emitter asks here
//! before it reserves a record: flow events are budgeted per local tenant, detections per pod
//! and detection, and flow events also stay out of the ring's reserve for detections. What is
//! refused, or finds the ring full, is counted for its owner, so the agent can say whom a
//! flood cost. State is per CPU: no two CPUs race on one allowance, and each CPU grants the
//! full rate (a tenant on n CPUs may reach n × rate; the agent's pipeline is fair after that).
//!
//! The packet programs have next to no stack left: nothing here copies to the stack. The
//! rates are a read-only global, a new owner's state comes from .rodata, and flow budgets
//! are keyed by the tenant id where the caller already holds it.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::maps::ring_buf::RingBufEntry;
use aya_ebpf::maps::LruPerCpuHashMap;
use moat_common::budget::{BudgetKey, BudgetState, EventBudget, BPF_RB_AVAIL_DATA};
use moat_common::event::{FlowEvent, GuardEvent};

use crate::maps::{ALLOW_BUDGETS, DETECTION_BUDGETS, EVENTS, EVENTS_LOST, FLOW_BUDGETS};

/// Set by the agent at load (`EbpfLoader::override_global`); all zero: no budgets.
#[unsafe(no_mangle)]
static EVENT_BUDGET: EventBudget = EventBudget {
    flow_interval_ns: 0,
    flow_burst_ns: 0,
    detection_interval_ns: 0,
    detection_burst_ns: 0,
    flow_ring_limit_bytes: 0,
};

/// Inserted for a new owner; its first event is then admitted as after a long silence.
static EMPTY: BudgetState = BudgetState {
    tat_ns: 0,
    over_budget: 0,
    ring_full: 0,
    ring_reserved: 0,
};

/// One field of the global, read so the compiler cannot fold the zero initializer.
macro_rules! rate {
    ($field:ident) => {
        // SAFETY: reading our own global.
        unsafe { core::ptr::read_volatile(&EVENT_BUDGET.$field) }
    };
}

#[inline(always)]
fn flow_map(allow: bool) -> &'static LruPerCpuHashMap<u64, BudgetState> {
    if allow {
        &ALLOW_BUDGETS
    } else {
        &FLOW_BUDGETS
    }
}

/// Reserves a flow event of `tenant` in the ring buffer, if its budget and the ring allow;
/// counts the refusal for the tenant when not.
#[inline(always)]
pub fn reserve_flow(tenant: &u64, allow: bool) -> Option<RingBufEntry<FlowEvent>> {
    let state = state(flow_map(allow), tenant);
    let limit = rate!(flow_ring_limit_bytes);
    if limit != 0 && EVENTS.query(BPF_RB_AVAIL_DATA) > limit {
        if let Some(state) = state {
            state.ring_reserved += 1;
        }
        return None;
    }
    reserve(state, rate!(flow_interval_ns), rate!(flow_burst_ns))
}

/// Reserves a detection by the task in `cgroup`, if the pod's budget for it and the ring
/// allow; counts the refusal for the pod when not.
#[inline(always)]
pub fn reserve_detection(cgroup: u64, detection: u32) -> Option<RingBufEntry<GuardEvent>> {
    let key = BudgetKey {
        owner: cgroup,
        class: 0,
        code: detection as u8,
        _pad: [0; 6],
    };
    reserve(
        state(&DETECTION_BUDGETS, &key),
        rate!(detection_interval_ns),
        rate!(detection_burst_ns),
    )
}

/// Admits by the owner's budget, then reserves.
#[inline(always)]
fn reserve<T: 'static>(
    state: Option<&mut BudgetState>,
    interval_ns: u64,
    burst_ns: u64,
) -> Option<RingBufEntry<T>> {
    if let Some(state) = state {
        if !admit(state, interval_ns, burst_ns) {
            state.over_budget += 1;
            return None;
        }
        let entry = EVENTS.reserve::<T>(0);
        if entry.is_none() {
            state.ring_full += 1;
            count_lost();
        }
        return entry;
    }
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost();
    }
    entry
}

/// The node-wide count of records the ring had no room for.
#[inline(always)]
fn count_lost() {
    if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *lost += 1 };
    }
}

/// GCRA: admitted while the owner's spent allowance runs at most `burst_ns` ahead of now.
#[inline(always)]
fn admit(state: &mut BudgetState, interval_ns: u64, burst_ns: u64) -> bool {
    if interval_ns == 0 {
        return true;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let tat = if state.tat_ns > now {
        state.tat_ns
    } else {
        now
    };
    if tat - now > burst_ns {
        return false;
    }
    state.tat_ns = tat + interval_ns;
    true
}

/// This CPU's state of `key`, created empty if new; None if the map refuses (never for LRU).
#[inline(always)]
fn state<K>(map: &LruPerCpuHashMap<K, BudgetState>, key: &K) -> Option<&'static mut BudgetState> {
    if map.get_ptr_mut(key).is_none() {
        let _ = map.insert(key, &EMPTY, 0);
    }
    // SAFETY: this CPU's value of a live entry; no other CPU writes it.
    map.get_ptr_mut(key).map(|state| unsafe { &mut *state })
}
