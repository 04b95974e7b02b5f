//! What individual system calls say, where no security hook says it (or none can run): the
//! arguments at entry (mount, fsopen, mknod, unshare, modules/bpf/perf, ptrace, setns,
//! connect) and the results at exit (the file an open returned, the namespaces a setns
//! joined, the peer a connect reached).
//!
//! Each body runs under one syscall's own probe — a `syscalls/sys_{enter,exit}_*` tracepoint,
//! or fentry/fexit at the syscall's entry function where the kernel has trampolines — so a
//! system call no detection watches runs no program of the guard.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes};
use aya_ebpf::helpers::generated::bpf_send_signal;
use moat_common::event::{
    GuardEvent, DETECTION_CGROUP_RELEASE_AGENT, DETECTION_HOST_MOUNT, DETECTION_KERNEL_MODULE, DETECTION_KUBELET_API,
    DETECTION_PTRACE, DETECTION_RUNTIME_SOCKET, DETECTION_SETNS, EVIDENCE_ADDRESS, EVIDENCE_CALL, EVIDENCE_MKNOD,
    EVIDENCE_MOUNT, EVIDENCE_NAMESPACES, EVIDENCE_SOCKET, EVIDENCE_TARGET, GUARD_ACTION_KILLED, GUARD_HOOK_CONNECT_UNIX,
    GUARD_HOOK_SYS_ENTER, GUARD_HOOK_SYS_EXIT, GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF, MOUNT_FSTYPE_LEN,
    MOUNT_SOURCE_LEN,
};
use moat_common::guard::{
    self as g, FileKey, GuardSettings, SetnsEntry, UnixRefusal, ACTOR_HOST_NETWORK, ACTOR_HOST_PID, FILE_RUNTIME_SOCKET, NS_COUNT,
    NS_NET, NS_PID, SOCKET_PATH_LEN,
};

use super::actor::{self, Actor};
use super::args::SyscallArgs;
use super::bytes::starts;
use super::kernel;
use super::mount::{self, MountKind};
use super::security::endpoint;
use super::{file, report};
use crate::maps::{GUARD_API_SERVERS, GUARD_FILES, GUARD_SETNS, GUARD_TAINTED, GUARD_UNIX_REFUSED};

const CLONE_NEWUSER: u64 = 0x1000_0000;
const S_IFMT: u64 = 0o170000;
const S_IFBLK: u64 = 0o060000;
const PTRACE_POKETEXT: u64 = 4;
const PTRACE_POKEDATA: u64 = 5;
const PTRACE_POKEUSER: u64 = 6;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
const EINPROGRESS: i64 = 115;
const EPERM: i64 = 1;
const SIGKILL: u32 = 9;
const AF_UNIX: u16 = 1;

/// A pod's task (with the settings), or `None` for host processes and before the agent is
/// ready.
#[inline(always)]
fn pod_actor() -> Option<(GuardSettings, Actor)> {
    let settings = actor::settings()?;
    let actor = actor::current(&settings)?;
    actor.in_pod.then_some((settings, actor))
}

/// A record of `detection` seen at syscall entry, unless the detection is off.
#[inline(always)]
fn report_enter(detection: u32, actor: &Actor, evidence: u8, fill: impl FnOnce(*mut GuardEvent)) {
    if report::mode(detection) == GUARD_MODE_OFF {
        return;
    }
    report::emit(detection, GUARD_HOOK_SYS_ENTER, false, actor, evidence, fill);
}

/// mount(source, target, fstype, flags, data) or fsopen(fstype, flags): cgroup filesystems
/// (release_agent), debugfs/tracefs/securityfs/bpf, proc/sys remounts and block devices.
/// The container runtime mounting the container's own /proc and cgroup2 is not an escape.
#[inline(always)]
pub fn mount(args: &impl SyscallArgs, fsopen: bool) {
    let Some((_, actor)) = pod_actor() else { return };
    if actor::is_runtime() {
        return;
    }
    let (source, target, fstype, flags) =
        if fsopen { (0, 0, args.arg(0), 0) } else { (args.arg(0), args.arg(1), args.arg(2), args.arg(3)) };
    let mut kind = [0u8; 16];
    // SAFETY: user string copies bounded by the buffers.
    let kind_len = if fstype != 0 { unsafe { bpf_probe_read_user_str_bytes(fstype as *const u8, &mut kind).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    let mut head = [0u8; 8];
    let source_len = if source != 0 { unsafe { bpf_probe_read_user_str_bytes(source as *const u8, &mut head).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    let mut dest = [0u8; 8];
    let dest_len = if target != 0 { unsafe { bpf_probe_read_user_str_bytes(target as *const u8, &mut dest).map(|s| s.len()).unwrap_or(0) } } else { 0 };
    let target_is_kernel_fs = starts(&dest, dest_len, b"/proc") || starts(&dest, dest_len, b"/sys");
    let detection = match mount::classify(&kind, kind_len, &head, source_len, flags, target_is_kernel_fs) {
        MountKind::CgroupFs => DETECTION_CGROUP_RELEASE_AGENT,
        MountKind::HostMount => DETECTION_HOST_MOUNT,
        MountKind::Normal => return,
    };
    report_enter(detection, &actor, EVIDENCE_MOUNT, |event| {
        // SAFETY: the reserved record; the three fields are NUL-padded slices of the subject.
        unsafe {
            (*event).arg = flags;
            (*event).owner = if fsopen { g::SYSCALL_FSOPEN } else { g::SYSCALL_MOUNT } as u64;
            let subject = &mut (*event).subject;
            if fstype != 0 {
                let _ = bpf_probe_read_user_str_bytes(fstype as *const u8, &mut subject[..MOUNT_FSTYPE_LEN]);
            }
            if source != 0 {
                let _ = bpf_probe_read_user_str_bytes(source as *const u8, &mut subject[MOUNT_FSTYPE_LEN..MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN]);
            }
            if target != 0 {
                let _ = bpf_probe_read_user_str_bytes(target as *const u8, &mut subject[MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN..]);
            }
        }
    });
}

/// mknod(path, mode, dev) / mknodat(dirfd, path, mode, dev) of a block device, in detect
/// mode (in block mode cgroup/dev refuses and reports it; report each action once).
#[inline(always)]
pub fn mknod(args: &impl SyscallArgs, at: bool) {
    if report::mode(DETECTION_HOST_MOUNT) != GUARD_MODE_DETECT {
        return;
    }
    let first = if at { 1 } else { 0 };
    let (path, mode, dev) = (args.arg(first), args.arg(first + 1), args.arg(first + 2));
    if mode & S_IFMT != S_IFBLK {
        return;
    }
    let Some((_, actor)) = pod_actor() else { return };
    report_enter(DETECTION_HOST_MOUNT, &actor, EVIDENCE_MKNOD, |event| {
        // SAFETY: the reserved record; a user string into the subject.
        unsafe {
            (*event).arg = dev;
            (*event).owner = if at { g::SYSCALL_MKNODAT } else { g::SYSCALL_MKNOD } as u64;
            let _ = bpf_probe_read_user_str_bytes(path as *const u8, &mut (*event).subject);
        }
    });
}

/// unshare(flags) of a user namespace.
#[inline(always)]
pub fn unshare(args: &impl SyscallArgs) {
    let flags = args.arg(0);
    if flags & CLONE_NEWUSER == 0 {
        return;
    }
    let Some((_, actor)) = pod_actor() else { return };
    report_enter(DETECTION_SETNS, &actor, EVIDENCE_CALL, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = flags;
            (*event).owner = g::SYSCALL_UNSHARE as u64;
        }
    });
}

/// init_module, finit_module, bpf, perf_event_open from a pod.
#[inline(always)]
pub fn kernel_code(args: &impl SyscallArgs, call: u32) {
    let Some((_, actor)) = pod_actor() else { return };
    let first = args.arg(0);
    report_enter(DETECTION_KERNEL_MODULE, &actor, EVIDENCE_CALL, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = first;
            (*event).owner = call as u64;
        }
    });
}

/// ptrace(request, pid, ...) that attaches or writes.
#[inline(always)]
pub fn ptrace(args: &impl SyscallArgs) {
    let request = args.arg(0);
    if matches!(request, PTRACE_ATTACH | PTRACE_SEIZE | PTRACE_POKETEXT | PTRACE_POKEDATA | PTRACE_POKEUSER) {
        targeted(g::SYSCALL_PTRACE, request, args.arg(1) as u32);
    }
}

/// process_vm_writev(pid, ...)
#[inline(always)]
pub fn process_vm_writev(args: &impl SyscallArgs) {
    targeted(g::SYSCALL_PROCESS_VM_WRITEV, 0, args.arg(0) as u32);
}

#[inline(always)]
fn targeted(call: u32, request: u64, target: u32) {
    let Some((_, actor)) = pod_actor() else { return };
    report_enter(DETECTION_PTRACE, &actor, EVIDENCE_TARGET, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = request;
            (*event).owner = call as u64;
            (*event).target_pid = target;
            // The PID namespace `target` is a number in: the agent cannot read it from /proc
            // once the actor has exited, which a process_vm_writev caller does at once.
            (*event).ino = kernel::current_namespaces()[NS_PID] as u64;
        }
    });
}

/// setns(fd, nstype) entry, from a pod: the arguments (an exit tracepoint has none) and the
/// namespaces the thread is in before. Joining one it already shares with the host (a
/// hostPID pod's PID namespace, a cgroup namespace the runtime did not unshare) is no
/// escape. Taken back at exit.
#[inline(always)]
pub fn setns_enter(args: &impl SyscallArgs) {
    if report::mode(DETECTION_SETNS) == GUARD_MODE_OFF || pod_actor().is_none() {
        return;
    }
    let entry = SetnsEntry { before: kernel::current_namespaces(), fd: args.arg(0), nstype: args.arg(1) };
    let _ = GUARD_SETNS.insert(&bpf_get_current_pid_tgid(), &entry, 0);
}

/// setns exit: a pod's thread changed namespaces. The record carries the facts — the fd's
/// filesystem and inode (an nsfs fd names one namespace), nstype (a pidfd joins those
/// types), the thread's namespaces before and after, the pod's host-shared namespaces — and
/// the agent tells which host namespaces were joined, dropping the rest (a pod entering its
/// own namespaces). Deciding that here would branch on every namespace of every input, and
/// Linux 6.1's verifier gives up on the combinations (E2BIG) after a minute.
#[inline(always)]
pub fn setns_exit(ret: i64) {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: plain-data key; the value is copied out before the entry is removed.
    let Some(entry) = (unsafe { GUARD_SETNS.get(&thread) }).copied() else { return };
    let _ = GUARD_SETNS.remove(&thread);
    if ret != 0 || report::mode(DETECTION_SETNS) == GUARD_MODE_OFF {
        return;
    }
    let Some((_, actor)) = pod_actor() else { return };
    let Some(target) = kernel::fd_file(entry.fd).and_then(kernel::file_id) else { return };
    let after = kernel::current_namespaces();
    let shared = ((actor.flags & ACTOR_HOST_NETWORK != 0) as u32) << NS_NET | ((actor.flags & ACTOR_HOST_PID != 0) as u32) << NS_PID;
    report::emit(DETECTION_SETNS, GUARD_HOOK_SYS_EXIT, false, &actor, EVIDENCE_NAMESPACES, |event| {
        // SAFETY: the reserved record; two arrays of NS_COUNT u32 fit the subject.
        unsafe {
            (*event).arg = target.magic;
            (*event).owner = entry.nstype;
            (*event).ino = target.ino;
            (*event).target_pid = shared;
            let slots = (*event).subject.as_mut_ptr() as *mut u32;
            let mut i = 0;
            while i < NS_COUNT {
                slots.add(i).write_unaligned(entry.before[i]);
                slots.add(NS_COUNT + i).write_unaligned(after[i]);
                i += 1;
            }
        }
    });
}


/// open/openat/openat2/creat exit: the file the call returned, for every process (host
/// processes only match the kubelet's credentials, by inode). The file first: most opens
/// concern no detection, and end before the actor is looked up.
#[inline(always)]
pub fn open_exit(ret: i64) {
    if ret < 0 {
        return;
    }
    let Some(settings) = actor::settings() else { return };
    let Some(opened) = kernel::fd_file(ret as u64).and_then(|file| file::candidate(file, file::Via::Syscall)) else { return };
    let Some(actor) = actor::current(&settings) else { return };
    if let Some(finding) = file::classify(&opened, &settings, &actor, file::Via::Syscall) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        file::report(&finding, GUARD_HOOK_SYS_EXIT, false, &actor, tgid, now);
    }
}

/// connect(fd, addr, len) entry: a process that read the kubelet's credentials (tainted)
/// reaching an API server is reported. The taint first: almost no process has it, and the
/// lookup ends the program before the user-memory read of the address.
#[inline(always)]
pub fn connect_enter(args: &impl SyscallArgs) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain-data key.
    if unsafe { GUARD_TAINTED.get(&tgid) }.is_none() || report::mode(DETECTION_KUBELET_API) == GUARD_MODE_OFF {
        return;
    }
    let sockaddr = args.arg(1);
    // SAFETY: user memory read through the helper.
    let Ok(family) = (unsafe { bpf_probe_read_user(sockaddr as *const u16) }) else { return };
    if family == AF_UNIX {
        return;
    }
    let mut raw = [0u8; 24];
    // SAFETY: user memory read through the helper; IPv4 needs only the first 8 bytes.
    let read = if family == 2 {
        unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }.map(|head| raw[..8].copy_from_slice(&head))
    } else {
        unsafe { bpf_probe_read_user(sockaddr as *const [u8; 24]) }.map(|all| raw = all)
    };
    if read.is_err() {
        return;
    }
    let Some(key) = endpoint(&raw) else { return };
    // SAFETY: plain-data key.
    if unsafe { GUARD_API_SERVERS.get(&key) }.is_none() {
        return;
    }
    let Some(settings) = actor::settings() else { return };
    let Some(actor) = actor::current(&settings) else { return };
    report::emit(DETECTION_KUBELET_API, GUARD_HOOK_SYS_ENTER, false, &actor, EVIDENCE_ADDRESS, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = key.port as u64;
            (&mut (*event).subject)[..16].copy_from_slice(&key.addr);
        }
    });
}

/// connect exit: reports what cgroup/connect_unix refused this thread (that program cannot
/// report itself), and — where no security hook sees unix connects — a pod that reached a
/// container runtime's socket by a path the cgroup hook could not match (symlink, relative
/// path): in block mode the process is killed before connect() returns, so it never sends
/// the runtime a request. `fd`: the socket, where the probe reads it (the tracepoint, from
/// the saved registers). The socket's family first (three loads): an inet connect — nearly
/// every connect a pod makes — ends there, before the actor lookup; then the actor, so a
/// host process's unix connect ends before the reads that find the peer.
#[inline(always)]
pub fn connect_exit(fd: Option<u64>, ret: i64) {
    // A refusal always fails the call with EPERM: a connect that succeeded skips the lookup.
    if ret == -EPERM {
        let thread = bpf_get_current_pid_tgid();
        // SAFETY: plain-data key; the value is copied out before the entry is removed.
        if let Some(refusal) = unsafe { GUARD_UNIX_REFUSED.get(&thread) }.copied() {
            let _ = GUARD_UNIX_REFUSED.remove(&thread);
            if let Some((_, actor)) = pod_actor() {
                report_refusal(&refusal, &actor);
            }
        }
        return;
    }
    let Some(fd) = fd else { return };
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let mode = report::mode(DETECTION_RUNTIME_SOCKET);
    if mode == GUARD_MODE_OFF {
        return;
    }
    let Some(sk) = kernel::fd_file(fd).and_then(kernel::unix_sock) else { return };
    let Some((_, actor)) = pod_actor() else { return };
    let Some(peer) = kernel::unix_peer_id(sk) else { return };
    // SAFETY: plain-data key.
    let protected = unsafe { GUARD_FILES.get(&FileKey { dev: peer.dev, ino: peer.ino }) };
    if !matches!(protected, Some(rule) if rule.class == FILE_RUNTIME_SOCKET) {
        return;
    }
    // SAFETY: signals the current process, which is in a syscall.
    let killed = mode == GUARD_MODE_BLOCK && unsafe { bpf_send_signal(SIGKILL) } == 0;
    report::emit(DETECTION_RUNTIME_SOCKET, GUARD_HOOK_SYS_EXIT, false, &actor, EVIDENCE_SOCKET, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).blocked = if killed { GUARD_ACTION_KILLED } else { 0 };
            (*event).dev = peer.dev;
            (*event).ino = peer.ino;
        }
    });
}

/// A connect cgroup/connect_unix refused: the runtime socket and the path the pod named.
#[inline(always)]
fn report_refusal(refusal: &UnixRefusal, actor: &Actor) {
    report::emit(DETECTION_RUNTIME_SOCKET, GUARD_HOOK_CONNECT_UNIX, true, actor, EVIDENCE_SOCKET, |event| {
        // SAFETY: the reserved record; the path is shorter than the subject.
        unsafe {
            (*event).dev = refusal.socket.dev;
            (*event).ino = refusal.socket.ino;
            (&mut (*event).subject)[..SOCKET_PATH_LEN].copy_from_slice(&refusal.path);
        }
    });
}

/// sched_process_fork: a child of a tainted process is tainted too (`cat key | curl` runs
/// the reader and the client as siblings of one shell, but `sh -c 'read; curl'` as a child).
#[inline(always)]
pub fn fork(parent: usize, child: usize) {
    let parent_tgid = kernel::task_tgid(parent);
    // SAFETY: plain-data key.
    if let Some(when) = unsafe { GUARD_TAINTED.get(&parent_tgid) } {
        let when = *when;
        let child_tgid = kernel::task_tgid(child);
        if child_tgid != parent_tgid {
            let _ = GUARD_TAINTED.insert(&child_tgid, &when, 0);
        }
    }
}
