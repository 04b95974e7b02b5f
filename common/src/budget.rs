//! Event budgets before the ring buffer: each tenant's flow events and each pod's detections
//! (per detection) have an allowance of their own, so a flood spends only the flooder's.
//! The agent sets the rates (`EventBudget`, the programs' read-only global `EVENT_BUDGET`)
//! at load and reads what was dropped, for whom and why, from the budget maps.

/// Map names (see `maps::names` for the datapath's).
pub mod names {
    /// Deny events: local tenant id (`u64`) → `BudgetState`, per CPU (LRU). Keyed by the
    /// bare id so the packet programs, short of stack, look it up where it already lies.
    pub const FLOW_BUDGETS: &str = "FLOW_BUDGETS";
    /// Allowed-flow events (`SETTING_REPORT_ALLOWED`), apart from the denies: as above.
    pub const ALLOW_BUDGETS: &str = "ALLOW_BUDGETS";
    /// Detections: `BudgetKey` (actor's cgroup, detection) → `BudgetState`, per CPU (LRU).
    pub const DETECTION_BUDGETS: &str = "DETECTION_BUDGETS";
    /// The programs' read-only global holding the `EventBudget`.
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
}

/// Owners (tenants; pods × detections) tracked at once per map; the least recently used goes.
pub const EVENT_BUDGETS_CAPACITY: u32 = 16_384;

/// What a `BudgetKey` read back by the agent stands for: deny events of a local tenant
/// (`owner` = tenant id, 0 for none), allowed-flow events of one, or one pod's detections
/// (`owner` = the actor's cgroup id, `code` = the detection).
pub const CLASS_DENY: u8 = 1;
pub const CLASS_ALLOW: u8 = 2;
pub const CLASS_DETECTION: u8 = 3;

/// `bpf_ringbuf_query` flag: bytes written but not yet read.
pub const BPF_RB_AVAIL_DATA: u64 = 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    pub owner: u64,
    pub class: u8,
    /// The detection code (`DETECTION_BUDGETS`), else 0.
    pub code: u8,
    pub _pad: [u8; 6],
}

/// One owner's allowance on one CPU and what it lost there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// GCRA: the time (`bpf_ktime_get_ns`) at which the allowance is fully spent; an event is
    /// admitted while this is at most the burst ahead of now.
    pub tat_ns: u64,
    /// Events refused because the owner had spent its allowance.
    pub over_budget: u64,
    /// Events the full ring buffer had no room for.
    pub ring_full: u64,
    /// Flow events refused to keep the ring's reserve free for detections.
    pub ring_reserved: u64,
}

/// The budgets, per owner and per CPU. An interval of 0 turns that budget off (all zero, as
/// before the agent sets it: no budgets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Nanoseconds between flow events of one tenant (1e9 / rate).
    pub flow_interval_ns: u64,
    /// How far ahead of now a tenant may spend: (burst - 1) × interval.
    pub flow_burst_ns: u64,
    pub detection_interval_ns: u64,
    pub detection_burst_ns: u64,
    /// Flow events are not written while the ring holds more unread bytes than this, so
    /// detections always find room (0: no reserve).
    pub flow_ring_limit_bytes: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted below).
    unsafe impl aya::Pod for BudgetKey {}
    unsafe impl aya::Pod for BudgetState {}
    unsafe impl aya::Pod for EventBudget {}
}

const _: () = {
    assert!(core::mem::size_of::<BudgetKey>() == 16);
    assert!(core::mem::size_of::<BudgetState>() == 32);
    assert!(core::mem::size_of::<EventBudget>() == 40);
};
