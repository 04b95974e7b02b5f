//! The runtime guard's kernel side. `escape.kernel-sysctl`: a write to the host's
//! `kernel/core_pattern` or `kernel/modprobe` from a pod, seen (and refused) by the
//! cgroup_sysctl hook, which runs on every kernel with cgroup BPF, LSM or not.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, generated::bpf_sysctl_get_name,
    },
    programs::SysctlContext,
};
use moat_common::event::{
    GuardEvent, DETECTION_KERNEL_SYSCTL, EVENT_KIND_DETECTION, EVIDENCE_SYSCTL, EXE_NAME_LEN, GUARD_HOOK_SYSCTL, GUARD_MODE_BLOCK,
    GUARD_MODE_OFF, SUBJECT_LEN, SYSCTL_NAME_LEN,
};

use super::bytes::eq;
use crate::budget;
use crate::maps::GUARD_MODES;

const ALLOW: i32 = 1;
/// The writer gets EPERM.
const REFUSE: i32 = 0;

const CORE_PATTERN: &[u8] = b"kernel/core_pattern";
const MODPROBE: &[u8] = b"kernel/modprobe";

#[inline(always)]
pub fn on_sysctl(ctx: &SysctlContext) -> i32 {
    // SAFETY: the context pointer is the program's own bpf_sysctl.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return ALLOW;
    }
    let mode = match GUARD_MODES.get(DETECTION_KERNEL_SYSCTL) {
        Some(mode) => *mode,
        None => return ALLOW,
    };
    if mode == GUARD_MODE_OFF {
        return ALLOW;
    }
    let mut name = [0u8; SYSCTL_NAME_LEN];
    // Flags 0: the full name below /proc/sys, e.g. `kernel/core_pattern`. Returns its length,
    // or -E2BIG when cut (no name we look for is that long).
    // SAFETY: the buffer is ours and its length is passed.
    let len = unsafe { bpf_sysctl_get_name(ctx.sysctl, name.as_mut_ptr().cast(), SYSCTL_NAME_LEN as u64, 0) };
    let len = if len < 0 { 0 } else { len as usize };
    if !(eq(&name, len, CORE_PATTERN) || eq(&name, len, MODPROBE)) {
        return ALLOW;
    }
    let blocked = mode == GUARD_MODE_BLOCK;
    report(&name, blocked);
    if blocked { REFUSE } else { ALLOW }
}

#[inline(always)]
fn report(name: &[u8; SYSCTL_NAME_LEN], blocked: bool) {
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let Some(mut entry) = budget::reserve_detection(cgroup, DETECTION_KERNEL_SYSCTL) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut subject = [0u8; SUBJECT_LEN];
    subject[..SYSCTL_NAME_LEN].copy_from_slice(name);
    entry.write(GuardEvent {
        kind: EVENT_KIND_DETECTION,
        detection: DETECTION_KERNEL_SYSCTL as u8,
        blocked: blocked as u8,
        hook: GUARD_HOOK_SYSCTL,
        evidence: EVIDENCE_SYSCTL,
        _pad: [0; 3],
        // SAFETY: helpers without arguments that may fail.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        ppid: 0,
        target_pid: 0,
        dev: 0,
        ino: 0,
        arg: 0,
        owner: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        // The agent names the executable from /proc: this hook reads no kernel memory.
        exe_dev: 0,
        exe_ino: 0,
        exe_name: [0; EXE_NAME_LEN],
        subject,
    });
    entry.submit(0);
}
