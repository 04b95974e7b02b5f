//! Records the programs send to the agent through the `EVENTS` ring buffer.

pub const EVENT_KIND_DENY: u8 = 1;
/// A newly admitted flow (only when the agent asks for them: `SETTING_REPORT_ALLOWED`).
pub const EVENT_KIND_ALLOW: u8 = 2;

pub const HOOK_SKB: u8 = 1;
pub const HOOK_CONNECT: u8 = 2;
pub const HOOK_SENDMSG: u8 = 3;

/// A packet or socket call denied, or (when asked for) a new flow admitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u8,
    /// `HOOK_*`
    pub hook: u8,
    /// `maps::DIRECTION_*`
    pub direction: u8,
    /// `verdict::Reason` as u8.
    pub reason: u8,
    pub protocol: u8,
    pub _pad: [u8; 3],
    pub timestamp_ns: u64,
    /// cgroup of the local socket: identifies the local pod.
    pub cgroup: u64,
    pub local_tenant: u64,
    pub remote_tenant: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad2: u32,
    /// For a NetworkPolicy deny: the local pod's isolating policy set.
    pub policy_set: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (size asserted below).
unsafe impl aya::Pod for FlowEvent {}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 88);
