//! Detection records into the `EVENTS` ring buffer. Records are filled in place (the stack
//! is too small for a second copy) and start zeroed where the caller writes text.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use moat_common::event::{GuardEvent, EVENT_KIND_DETECTION, GUARD_MODE_OFF, SUBJECT_LEN};

use super::actor::Actor;
use super::kernel;
use crate::budget;
use crate::maps::GUARD_MODES;

/// The detection's mode (`GUARD_MODE_*`); off when unset.
#[inline(always)]
pub fn mode(detection: u32) -> u32 {
    GUARD_MODES.get(detection).copied().unwrap_or(GUARD_MODE_OFF)
}

/// A reserved record with the header filled: detection, hook, actor, process. The caller
/// fills the evidence and submits (or discards) it.
#[inline(always)]
pub fn start(
    detection: u32,
    hook: u8,
    blocked: bool,
    actor: &Actor,
) -> Option<RingBufEntry<GuardEvent>> {
    let mut entry = budget::reserve_detection(actor.cgroup, detection)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at the reserved record; every field is written before submit.
    unsafe {
        (*event).kind = EVENT_KIND_DETECTION;
        (*event).detection = detection as u8;
        (*event).blocked = blocked as u8;
        (*event).hook = hook;
        (*event)._pad = [0; 4];
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).cgroup = actor.cgroup;
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = kernel::parent_tgid();
        (*event).target_pid = 0;
        (*event).dev = 0;
        (*event).ino = 0;
        (*event).arg = 0;
        (*event).owner = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let words = (*event).subject.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < SUBJECT_LEN / 8 {
            words.add(i).write_unaligned(0);
            i += 1;
        }
    }
    Some(entry)
}
