//! Detection records into the `EVENTS` ring buffer. Records are filled in place (the stack
//! is too small for a second copy) and start zeroed where the caller writes text.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use moat_common::event::{GuardEvent, EVENT_KIND_DETECTION, EXE_NAME_LEN, GUARD_MODE_OFF, SUBJECT_LEN};

use super::actor::Actor;
use super::kernel;
use crate::budget;
use crate::maps::GUARD_MODES;

/// The detection's mode (`GUARD_MODE_*`); off when unset.
#[inline(always)]
pub fn mode(detection: u32) -> u32 {
    GUARD_MODES.get(detection).copied().unwrap_or(GUARD_MODE_OFF)
}

/// Reserves a record, fills its header — detection, hook, actor, process and the executable
/// it runs now (not after a later exec) — lets `fill` write the `evidence` kind's fields,
/// and submits it. The reservation is null-checked once, here: a second check after it
/// returned (`Option` through a caller) makes Linux 6.1's verifier believe the record can
/// leak, and it rejects the whole program.
#[inline(always)]
pub fn emit(detection: u32, hook: u8, blocked: bool, actor: &Actor, evidence: u8, fill: impl FnOnce(*mut GuardEvent)) {
    // The pod's budget for this detection, then the ring (refusals are counted per pod).
    let Some(mut entry) = budget::reserve_detection(actor.cgroup, detection) else { return };
    let event = entry.as_mut_ptr();
    header(event, detection, hook, blocked, actor, evidence);
    fill(event);
    entry.submit(0);
}

#[inline(always)]
fn header(event: *mut GuardEvent, detection: u32, hook: u8, blocked: bool, actor: &Actor, evidence: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `event` points at the reserved record; every field is written before submit.
    unsafe {
        (*event).kind = EVENT_KIND_DETECTION;
        (*event).detection = detection as u8;
        (*event).blocked = blocked as u8;
        (*event).hook = hook;
        (*event).evidence = evidence;
        (*event)._pad = [0; 3];
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
        (*event).exe_dev = 0;
        (*event).exe_ino = 0;
        (*event).exe_name = [0; EXE_NAME_LEN];
        if let Some(exe) = kernel::current_exe_file() {
            if let Some(id) = kernel::file_id(exe) {
                (*event).exe_dev = id.dev;
                (*event).exe_ino = id.ino;
            }
            if let Some(dentry) = kernel::file_dentry(exe) {
                kernel::dentry_name(dentry, &mut (*event).exe_name);
            }
        }
        let words = (*event).subject.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < SUBJECT_LEN / 8 {
            words.add(i).write_unaligned(0);
            i += 1;
        }
    }
}
