//! BPF LSM programs: where the kernel has BPF LSM, these see the same actions as the
//! detection tracepoints, before they happen, and refuse them (-EPERM) in block mode. They
//! share the classification code with the tracepoints; a tracepoint path whose LSM hook is
//! attached (`GuardSettings::lsm_hooks`) leaves reporting to the LSM program.
//!
//! Each program first honours the verdict of BPF LSM programs before it (the argument after
//! the hook's own, at an index the agent reads from BTF).

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes};
use aya_ebpf::programs::LsmContext;
use moat_common::event::{
    DETECTION_CGROUP_RELEASE_AGENT, DETECTION_HOST_MOUNT, DETECTION_KERNEL_MODULE, DETECTION_PTRACE,
    DETECTION_RUNTIME_SOCKET, DETECTION_SETNS, GUARD_HOOK_LSM, GUARD_MODE_BLOCK, GUARD_MODE_OFF,
    MOUNT_FSTYPE_LEN, MOUNT_SOURCE_LEN,
};
use moat_common::guard::{self as g, FileKey, FILE_RUNTIME_SOCKET, LSM_HOOKS};

use super::actor::{self, Actor};
use super::file;
use super::kernel::{self, offset, KERNEL_LAYOUT};
use super::mount::{self, MountKind};
use super::report;
use crate::maps::{GUARD_ACTORS, GUARD_FILES};

const EPERM: i32 = -1;
/// `PTRACE_MODE_ATTACH`: ptrace attach, process_vm_writev, writing /proc/PID/mem.
const PTRACE_MODE_ATTACH: u64 = 0x02;
/// `READING_MODULE` / `LOADING_MODULE` in kernel_read_file_id / kernel_load_data_id.
const READING_MODULE: u64 = 2;
const LOADING_MODULE: u64 = 2;

/// The verdict of the BPF LSM programs that ran before this one.
#[inline(always)]
fn previous(ctx: &LsmContext, hook: u32) -> i32 {
    let index = if (hook as usize) < LSM_HOOKS {
        // SAFETY: reading our own global, index bounded.
        unsafe { core::ptr::read_volatile(&KERNEL_LAYOUT.lsm_ret_arg[hook as usize]) as usize }
    } else {
        0
    };
    if index == 0 || index > 6 {
        return 0;
    }
    ctx.arg::<u64>(index) as i32
}

/// Reports `detection` and returns the verdict its mode asks for.
#[inline(always)]
fn decide(detection: u32, actor: &Actor, fill: impl FnOnce(*mut moat_common::event::GuardEvent)) -> i32 {
    let mode = report::mode(detection);
    if mode == GUARD_MODE_OFF {
        return 0;
    }
    let blocked = mode == GUARD_MODE_BLOCK;
    if let Some(mut entry) = report::start(detection, GUARD_HOOK_LSM, blocked, actor) {
        fill(entry.as_mut_ptr());
        entry.submit(0);
    }
    if blocked { EPERM } else { 0 }
}

#[inline(always)]
fn pod_actor() -> Option<(g::GuardSettings, Actor)> {
    let settings = actor::settings()?;
    let actor = actor::current(&settings)?;
    Some((settings, actor))
}

pub fn file_open(ctx: &LsmContext) -> i32 {
    let before = previous(ctx, g::LSM_FILE_OPEN);
    if before != 0 {
        return before;
    }
    let Some((settings, actor)) = pod_actor() else { return 0 };
    let opened: u64 = ctx.arg(0);
    let opened = opened as usize;
    if let Some(finding) = file::classify(opened, &settings, &actor, true) {
        let mode = report::mode(finding.detection);
        let blocked = mode == GUARD_MODE_BLOCK;
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        file::report(&finding, GUARD_HOOK_LSM, blocked, &actor, tgid, now);
        return if blocked { EPERM } else { 0 };
    }
    0
}

pub fn sb_mount(ctx: &LsmContext) -> i32 {
    let before = previous(ctx, g::LSM_SB_MOUNT);
    if before != 0 {
        return before;
    }
    let Some((_, actor)) = pod_actor() else { return 0 };
    if !actor.in_pod || actor::is_runtime() {
        return 0;
    }
    let source: u64 = ctx.arg(0);
    let fstype: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    let mut kind = [0u8; 16];
    let mut head = [0u8; 8];
    // SAFETY: kernel strings copied with bounds.
    let kind_len = if fstype != 0 { unsafe { bpf_probe_read_kernel_str_bytes(fstype as *const u8, &mut kind).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    let source_len = if source != 0 { unsafe { bpf_probe_read_kernel_str_bytes(source as *const u8, &mut head).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    // The target is a `struct path` here: its filesystem tells /proc and /sys apart.
    let path: u64 = ctx.arg(1);
    let target_magic = kernel::ptr(path as usize, offset!(path_dentry))
        .and_then(|dentry| kernel::ptr(dentry, offset!(dentry_inode)))
        .and_then(kernel::inode_id)
        .map(|id| id.magic)
        .unwrap_or(0);
    let target_is_kernel_fs = target_magic == 0x9fa0 || target_magic == 0x6265_6572;
    let detection = match mount::classify(&kind, kind_len, &head, source_len, flags, target_is_kernel_fs) {
        MountKind::CgroupFs => DETECTION_CGROUP_RELEASE_AGENT,
        MountKind::HostMount => DETECTION_HOST_MOUNT,
        MountKind::Normal => return 0,
    };
    decide(detection, &actor, |event| {
        // SAFETY: the reserved record; kernel strings into NUL-padded slices of the subject.
        unsafe {
            (*event).arg = flags;
            (*event).owner = g::SYSCALL_MOUNT as u64;
            let subject = &mut (*event).subject;
            if fstype != 0 {
                let _ = bpf_probe_read_kernel_str_bytes(fstype as *const u8, &mut subject[..MOUNT_FSTYPE_LEN]);
            }
            if source != 0 {
                let _ = bpf_probe_read_kernel_str_bytes(source as *const u8, &mut subject[MOUNT_FSTYPE_LEN..MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN]);
            }
        }
    })
}

/// ptrace attach, process_vm_writev and /proc/PID/mem writes against a task outside the
/// actor's pod: the target's cgroup names its pod.
pub fn ptrace_access_check(ctx: &LsmContext) -> i32 {
    let before = previous(ctx, g::LSM_PTRACE_ACCESS_CHECK);
    if before != 0 {
        return before;
    }
    let mode: u64 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let Some((_, actor)) = pod_actor() else { return 0 };
    if !actor.in_pod {
        return 0;
    }
    let child: u64 = ctx.arg(0);
    let child = child as usize;
    let target_cgroup = kernel::ptr(child, offset!(task_cgroups))
        .and_then(|css| kernel::ptr(css, offset!(css_set_dfl_cgrp)))
        .and_then(|cgrp| kernel::ptr(cgrp, offset!(cgroup_kn)))
        .and_then(|kn| kernel::read::<u64>(kn, offset!(kernfs_node_id)))
        .unwrap_or(0);
    if target_cgroup == actor.cgroup {
        return 0;
    }
    // SAFETY: plain-data key.
    let target_pod = unsafe { GUARD_ACTORS.get(&target_cgroup) }.map(|a| a.pod).unwrap_or(0);
    if actor.pod != 0 && target_pod == actor.pod {
        return 0;
    }
    let target = kernel::task_tgid(child);
    decide(DETECTION_PTRACE, &actor, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).target_pid = target;
            (*event).arg = mode;
            (*event).owner = g::SYSCALL_PTRACE as u64;
        }
    })
}

#[inline(always)]
fn kernel_module(ctx: &LsmContext, hook: u32, call: u32, arg: u64) -> i32 {
    let before = previous(ctx, hook);
    if before != 0 {
        return before;
    }
    let Some((_, actor)) = pod_actor() else { return 0 };
    if !actor.in_pod {
        return 0;
    }
    decide(DETECTION_KERNEL_MODULE, &actor, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = arg;
            (*event).owner = call as u64;
        }
    })
}

pub fn bpf(ctx: &LsmContext) -> i32 {
    let cmd: u64 = ctx.arg(0);
    kernel_module(ctx, g::LSM_BPF, g::SYSCALL_BPF, cmd)
}

pub fn perf_event_open(ctx: &LsmContext) -> i32 {
    kernel_module(ctx, g::LSM_PERF_EVENT_OPEN, g::SYSCALL_PERF_EVENT_OPEN, 0)
}

pub fn kernel_read_file(ctx: &LsmContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if id != READING_MODULE {
        return previous(ctx, g::LSM_KERNEL_READ_FILE);
    }
    kernel_module(ctx, g::LSM_KERNEL_READ_FILE, g::SYSCALL_FINIT_MODULE, id)
}

pub fn kernel_load_data(ctx: &LsmContext) -> i32 {
    let id: u64 = ctx.arg(0);
    if id != LOADING_MODULE {
        return previous(ctx, g::LSM_KERNEL_LOAD_DATA);
    }
    kernel_module(ctx, g::LSM_KERNEL_LOAD_DATA, g::SYSCALL_INIT_MODULE, id)
}

pub fn userns_create(ctx: &LsmContext) -> i32 {
    let before = previous(ctx, g::LSM_USERNS_CREATE);
    if before != 0 {
        return before;
    }
    let Some((_, actor)) = pod_actor() else { return 0 };
    if !actor.in_pod {
        return 0;
    }
    decide(DETECTION_SETNS, &actor, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).hook = moat_common::event::GUARD_HOOK_SYS_ENTER;
            (*event).arg = 0x1000_0000;
            (*event).owner = g::SYSCALL_UNSHARE as u64;
        }
    })
}

/// A stream connect to a runtime socket: `other` is the listening socket, whose bound path
/// names the socket file.
pub fn unix_stream_connect(ctx: &LsmContext) -> i32 {
    let before = previous(ctx, g::LSM_UNIX_STREAM_CONNECT);
    if before != 0 {
        return before;
    }
    let Some((_, actor)) = pod_actor() else { return 0 };
    if !actor.in_pod {
        return 0;
    }
    let other: u64 = ctx.arg(1);
    let Some(dentry) = kernel::ptr(other as usize, offset!(unix_sock_path) + offset!(path_dentry)) else { return 0 };
    let Some(id) = kernel::ptr(dentry, offset!(dentry_inode)).and_then(kernel::inode_id) else { return 0 };
    // SAFETY: plain-data key.
    let protected = unsafe { GUARD_FILES.get(&FileKey { dev: id.dev, ino: id.ino }) };
    if !matches!(protected, Some(rule) if rule.class == FILE_RUNTIME_SOCKET) {
        return 0;
    }
    decide(DETECTION_RUNTIME_SOCKET, &actor, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).dev = id.dev;
            (*event).ino = id.ino;
        }
    })
}
