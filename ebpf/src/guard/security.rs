//! What the kernel's security hooks see, shared by the two ways of seeing it:
//!
//! * BPF LSM programs (`Gate::Refuse`): the kernel asks them before the action happens, so in
//!   block mode they refuse it (-EPERM).
//! * fentry programs at the `security_*` function of the same hook (`Gate::Observe`), where
//!   the kernel has BPF trampolines but BPF LSM is not active: they see the same arguments
//!   at the same moment, but cannot refuse, so they report.
//!
//! Each body takes the hook's arguments (read by the caller at constant offsets) and returns
//! its verdict; `Observe` never refuses.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes};
use aya_ebpf::helpers::generated::bpf_send_signal;
use moat_common::event::{
    GuardEvent, DETECTION_CGROUP_RELEASE_AGENT, DETECTION_HOST_MOUNT, DETECTION_KERNEL_MODULE, DETECTION_KUBELET_API,
    DETECTION_PTRACE, DETECTION_RUNTIME_SOCKET, DETECTION_SETNS, EVIDENCE_ADDRESS, EVIDENCE_CALL, EVIDENCE_MOUNT,
    EVIDENCE_SOCKET, EVIDENCE_TARGET, GUARD_ACTION_KILLED, GUARD_HOOK_FENTRY, GUARD_HOOK_LSM, GUARD_MODE_BLOCK,
    GUARD_MODE_OFF, MOUNT_FSTYPE_LEN, MOUNT_SOURCE_LEN,
};
use moat_common::guard::{self as g, Endpoint, FileKey, FILE_RUNTIME_SOCKET, NS_PID};
use moat_common::maps::ipv4_mapped;

use super::actor::{self, Actor};
use super::file;
use super::kernel::{self, offset, AF_INET, AF_INET6};
use super::mount::{self, MountKind};
use super::report;
use crate::maps::{GUARD_ACTORS, GUARD_API_SERVERS, GUARD_FILES, GUARD_TAINTED};

/// The verdict of a security hook: -EPERM or 0. Computed so that the verifier sees exactly
/// those two values: from `refused` as a boolean, LLVM emits `-(x & 1)`, which Linux 6.12's
/// verifier cannot bound, and it then rejects a BPF LSM program whose return value "should
/// have been in [-4095, 0]". A branch over two constants it can follow.
#[inline(always)]
fn verdict(refused: bool) -> i32 {
    #[allow(unused_mut)]
    let mut out: i64 = 0;
    #[cfg(target_arch = "bpf")]
    // SAFETY: two instructions on registers of our own: skip the store when not refused.
    unsafe {
        core::arch::asm!("if {flag} == 0 goto +1", "{out} = -1", flag = in(reg) refused as u64, out = inout(reg) out);
    }
    #[cfg(not(target_arch = "bpf"))]
    if refused {
        out = -1;
    }
    out as i32
}
const SIGKILL: u32 = 9;
/// `PTRACE_MODE_ATTACH`: ptrace attach, process_vm_writev, writing /proc/PID/mem.
const PTRACE_MODE_ATTACH: u64 = 0x02;
/// `READING_MODULE` / `LOADING_MODULE` in kernel_read_file_id / kernel_load_data_id.
const READING_MODULE: u64 = 2;
const LOADING_MODULE: u64 = 2;
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// Whether the program may refuse (BPF LSM) or only observe (fentry).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Refuse,
    Observe,
}

impl Gate {
    #[inline(always)]
    fn hook(self) -> u8 {
        match self {
            Gate::Refuse => GUARD_HOOK_LSM,
            Gate::Observe => GUARD_HOOK_FENTRY,
        }
    }

    /// Whether a detection in `mode` refuses here.
    #[inline(always)]
    fn refuses(self, mode: u32) -> bool {
        self == Gate::Refuse && mode == GUARD_MODE_BLOCK
    }
}

/// Reports `detection` (unless off) and returns the verdict its mode asks for.
#[inline(always)]
fn decide(detection: u32, gate: Gate, actor: &Actor, evidence: u8, fill: impl FnOnce(*mut GuardEvent)) -> i32 {
    let mode = report::mode(detection);
    if mode == GUARD_MODE_OFF {
        return 0;
    }
    let refused = gate.refuses(mode);
    report::emit(detection, gate.hook(), refused, actor, evidence, fill);
    verdict(refused)
}

/// The acting task, if it is a pod's (host processes are no actors for these hooks).
#[inline(always)]
fn pod_actor() -> Option<Actor> {
    let settings = actor::settings()?;
    actor::current(&settings).filter(|a| a.in_pod)
}

/// `file_open(struct file *)`: protected files, other pods' volumes, kernel interfaces;
/// host processes too, for the kubelet's credentials.
#[inline(always)]
pub fn file_open(file: u64, gate: Gate) -> i32 {
    let Some(settings) = actor::settings() else { return 0 };
    let via = if gate == Gate::Refuse { file::Via::Lsm } else { file::Via::Fentry };
    // The file first: most opens concern no detection, and end before the actor lookup.
    let Some(opened) = file::candidate(file as usize, via) else { return 0 };
    let Some(actor) = actor::current(&settings) else { return 0 };
    let Some(finding) = file::classify(&opened, &settings, &actor, via) else { return 0 };
    // Host processes are the operator's: reported, never refused (a node's own tooling may
    // read the kubelet's certificates; pods never need to).
    let refused = gate.refuses(report::mode(finding.detection)) && actor.in_pod;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    file::report(&finding, gate.hook(), refused, &actor, tgid, now);
    verdict(refused)
}

/// `sb_mount(dev_name, struct path *, type, flags, data)`: the old mount API.
#[inline(always)]
pub fn sb_mount(source: u64, path: u64, fstype: u64, flags: u64, gate: Gate) -> i32 {
    let Some(actor) = pod_actor() else { return 0 };
    if actor::is_runtime() {
        return 0;
    }
    let mut kind = [0u8; 16];
    let mut head = [0u8; 8];
    // SAFETY: kernel strings copied with bounds.
    let kind_len = if fstype != 0 { unsafe { bpf_probe_read_kernel_str_bytes(fstype as *const u8, &mut kind).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    let source_len = if source != 0 { unsafe { bpf_probe_read_kernel_str_bytes(source as *const u8, &mut head).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    // The target is a `struct path` here: its filesystem tells /proc and /sys apart.
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
    // The target as mount(2) named it (sb_mount only runs for that call), like the syscall
    // probes report it; the mount point's own name where the caller's registers are not
    // readable.
    let target_user = kernel::current_syscall_arg(1);
    let target_dentry = kernel::ptr(path as usize, offset!(path_dentry)).unwrap_or(0);
    decide(detection, gate, &actor, EVIDENCE_MOUNT, |event| {
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
            let target = &mut subject[MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN..];
            let from_user = target_user.is_some_and(|at| bpf_probe_read_user_str_bytes(at as *const u8, target).is_ok());
            if !from_user && target_dentry != 0 {
                kernel::dentry_name(target_dentry, target);
            }
        }
    })
}

/// `ptrace_access_check(child, mode)`: ptrace attach, process_vm_writev and /proc/PID/mem
/// writes against a task outside the actor's pod (the target's cgroup names its pod).
#[inline(always)]
pub fn ptrace_access_check(child: u64, mode: u64, gate: Gate) -> i32 {
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let Some(settings) = actor::settings() else { return 0 };
    let Some(actor) = actor::current(&settings).filter(|a| a.in_pod) else { return 0 };
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
    // The kernel's task: its tgid is in the host's PID namespace.
    let host_pid_ns = settings.host_ns[NS_PID] as u64;
    // ptrace, process_vm_writev, an open of /proc/PID/mem... all ask this hook: the call is
    // the caller's syscall number (the agent names it).
    let call = kernel::current_syscall_nr().map(|nr| g::SYSCALL_NUMBER | nr).unwrap_or(g::SYSCALL_PTRACE as u64);
    decide(DETECTION_PTRACE, gate, &actor, EVIDENCE_TARGET, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).target_pid = target;
            (*event).ino = host_pid_ns;
            (*event).arg = mode;
            (*event).owner = call;
        }
    })
}

/// A pod loading kernel code or tracing the kernel: modules, bpf(), perf_event_open.
#[inline(always)]
fn kernel_code(call: u32, first: u64, gate: Gate) -> i32 {
    let Some(actor) = pod_actor() else { return 0 };
    decide(DETECTION_KERNEL_MODULE, gate, &actor, EVIDENCE_CALL, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = first;
            (*event).owner = call as u64;
        }
    })
}

/// `bpf(cmd, attr, size[, kernel])`
#[inline(always)]
pub fn bpf(cmd: u64, gate: Gate) -> i32 {
    kernel_code(g::SYSCALL_BPF, cmd, gate)
}

/// `perf_event_open(attr, type)`
#[inline(always)]
pub fn perf_event_open(gate: Gate) -> i32 {
    kernel_code(g::SYSCALL_PERF_EVENT_OPEN, 0, gate)
}

/// `kernel_read_file(file, id, contents)`: only module loading (finit_module).
#[inline(always)]
pub fn kernel_read_file(id: u64, gate: Gate) -> i32 {
    if id != READING_MODULE {
        return 0;
    }
    kernel_code(g::SYSCALL_FINIT_MODULE, id, gate)
}

/// `kernel_load_data(id, contents)`: only module loading (init_module).
#[inline(always)]
pub fn kernel_load_data(id: u64, gate: Gate) -> i32 {
    if id != LOADING_MODULE {
        return 0;
    }
    kernel_code(g::SYSCALL_INIT_MODULE, id, gate)
}

/// `userns_create(cred)`: a new user namespace (unshare or clone with CLONE_NEWUSER).
#[inline(always)]
pub fn userns_create(gate: Gate) -> i32 {
    let Some(actor) = pod_actor() else { return 0 };
    decide(DETECTION_SETNS, gate, &actor, EVIDENCE_CALL, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = CLONE_NEWUSER;
            (*event).owner = g::SYSCALL_UNSHARE as u64;
        }
    })
}

/// `unix_stream_connect(sock, other, newsk)`: `other` is the listening socket, whose bound
/// path names the socket file. Observing (no BPF LSM), block mode kills the process here,
/// before connect() returns, so it never sends the runtime a request.
#[inline(always)]
pub fn unix_stream_connect(other: u64, gate: Gate) -> i32 {
    let Some(actor) = pod_actor() else { return 0 };
    let Some(dentry) = kernel::ptr(other as usize, offset!(unix_sock_path) + offset!(path_dentry)) else { return 0 };
    let Some(id) = kernel::ptr(dentry, offset!(dentry_inode)).and_then(kernel::inode_id) else { return 0 };
    // SAFETY: plain-data key.
    let protected = unsafe { GUARD_FILES.get(&FileKey { dev: id.dev, ino: id.ino }) };
    if !matches!(protected, Some(rule) if rule.class == FILE_RUNTIME_SOCKET) {
        return 0;
    }
    let mode = report::mode(DETECTION_RUNTIME_SOCKET);
    if gate == Gate::Observe && mode == GUARD_MODE_BLOCK {
        // SAFETY: signals the current process, which is in a syscall.
        let killed = unsafe { bpf_send_signal(SIGKILL) } == 0;
        report::emit(DETECTION_RUNTIME_SOCKET, gate.hook(), false, &actor, EVIDENCE_SOCKET, |event| {
            // SAFETY: the reserved record.
            unsafe {
                (*event).blocked = if killed { GUARD_ACTION_KILLED } else { 0 };
                (*event).dev = id.dev;
                (*event).ino = id.ino;
            }
        });
        return 0;
    }
    decide(DETECTION_RUNTIME_SOCKET, gate, &actor, EVIDENCE_SOCKET, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).dev = id.dev;
            (*event).ino = id.ino;
        }
    })
}

/// `socket_connect(sock, address, addrlen)`: a host process that read the kubelet's
/// credentials (tainted) connecting to an API server. Reported, never refused: host
/// processes are the operator's, and the read itself was the detection that blocks.
#[inline(always)]
pub fn socket_connect(address: u64, gate: Gate) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain-data key.
    if unsafe { GUARD_TAINTED.get(&tgid) }.is_none() || report::mode(DETECTION_KUBELET_API) == GUARD_MODE_OFF {
        return 0;
    }
    let Some(key) = endpoint_kernel(address as usize) else { return 0 };
    // SAFETY: plain-data key.
    if unsafe { GUARD_API_SERVERS.get(&key) }.is_none() {
        return 0;
    }
    let Some(settings) = actor::settings() else { return 0 };
    let Some(actor) = actor::current(&settings) else { return 0 };
    report::emit(DETECTION_KUBELET_API, gate.hook(), false, &actor, EVIDENCE_ADDRESS, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = key.port as u64;
            (&mut (*event).subject)[..16].copy_from_slice(&key.addr);
        }
    });
    0
}

/// An IPv4/IPv6 socket address in kernel memory (the kernel's `sockaddr_storage` copy, so
/// reading 24 bytes stays inside it) as an `Endpoint`.
#[inline(always)]
fn endpoint_kernel(sockaddr: usize) -> Option<Endpoint> {
    // SAFETY: kernel memory read through the helper.
    let raw = unsafe { bpf_probe_read_kernel(sockaddr as *const [u8; 24]) }.ok()?;
    endpoint(&raw)
}

/// An `Endpoint` from the first 24 bytes of a sockaddr_in or sockaddr_in6 (the first 8 of
/// an IPv4 one suffice).
#[inline(always)]
pub fn endpoint(raw: &[u8; 24]) -> Option<Endpoint> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let mut key = Endpoint::default();
    if family == AF_INET {
        key.port = u16::from_be_bytes([raw[2], raw[3]]);
        key.addr = ipv4_mapped([raw[4], raw[5], raw[6], raw[7]]);
    } else if family == AF_INET6 {
        key.port = u16::from_be_bytes([raw[2], raw[3]]);
        let mut i = 0;
        while i < 16 {
            key.addr[i] = raw[8 + i];
            i += 1;
        }
    } else {
        return None;
    }
    Some(key)
}
