//! The raw sys_enter/sys_exit tracepoints: detection where no blocking hook exists (or BPF
//! LSM is missing). The agent maps its architecture's syscall numbers to classes in
//! `GUARD_SYSCALLS`, so every other syscall costs one array lookup.
//!
//! sys_enter sees arguments (mount, mknod, unshare, module/bpf/perf, ptrace) and the
//! namespaces a setns starts from; sys_exit sees results: the file an open returned, the
//! peer a connect reached, the namespaces a setns joined.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes};
use aya_ebpf::helpers::generated::bpf_send_signal;
use aya_ebpf::programs::RawTracePointContext;
use moat_common::event::{
    DETECTION_CGROUP_RELEASE_AGENT, DETECTION_HOST_MOUNT, DETECTION_KERNEL_MODULE,
    DETECTION_KUBELET_API, DETECTION_PTRACE, DETECTION_RUNTIME_SOCKET, DETECTION_SETNS,
    GUARD_ACTION_KILLED, GUARD_HOOK_CONNECT_UNIX, GUARD_HOOK_SYS_ENTER, GUARD_HOOK_SYS_EXIT,
    GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF,
    MOUNT_FSTYPE_LEN, MOUNT_SOURCE_LEN,
};
use moat_common::guard::{
    self as g, capacity, Endpoint, FileKey, GuardSettings, ACTOR_HOST_NETWORK, ACTOR_HOST_PID,
    FILE_RUNTIME_SOCKET, NS_COUNT, NS_NET, NS_PID, SOCKET_PATH_LEN, UnixRefusal,
};
use moat_common::maps::ipv4_mapped;

use super::actor::{self, Actor};
use super::kernel::{self, offset, AF_INET, AF_INET6};
use super::bytes::starts;
use super::mount::{self, MountKind};
use super::{file, report};
use crate::maps::{GUARD_API_SERVERS, GUARD_FILES, GUARD_SETNS, GUARD_SYSCALLS, GUARD_TAINTED, GUARD_UNIX_REFUSED};

/// The syscall's argument `n` from the saved user registers.
#[inline(always)]
fn arg(regs: usize, n: usize) -> u64 {
    kernel::read::<u64>(regs, kernel::regs_arg(n)).unwrap_or(0)
}

#[inline(always)]
fn class_of(nr: u64) -> u32 {
    if nr >= capacity::GUARD_SYSCALLS as u64 {
        return g::SYSCALL_IGNORED;
    }
    GUARD_SYSCALLS.get(nr as u32).copied().unwrap_or(g::SYSCALL_IGNORED)
}

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

pub fn on_enter(ctx: &RawTracePointContext) -> u32 {
    let nr: u64 = ctx.arg(1);
    let class = class_of(nr);
    if class == g::SYSCALL_IGNORED {
        return 0;
    }
    let Some(settings) = actor::settings() else { return 0 };
    let Some(actor) = actor::current(&settings) else { return 0 };
    if !actor.in_pod {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let regs = regs as usize;
    // What an attached BPF LSM program sees, it reports (and blocks) itself.
    let lsm = settings.lsm_hooks;
    let by_lsm = |hook: u32| lsm & (1 << hook) != 0;
    match class {
        g::SYSCALL_MOUNT if by_lsm(g::LSM_SB_MOUNT) => {}
        g::SYSCALL_UNSHARE if by_lsm(g::LSM_USERNS_CREATE) => {}
        g::SYSCALL_INIT_MODULE if by_lsm(g::LSM_KERNEL_LOAD_DATA) => {}
        g::SYSCALL_FINIT_MODULE if by_lsm(g::LSM_KERNEL_READ_FILE) => {}
        g::SYSCALL_BPF if by_lsm(g::LSM_BPF) => {}
        g::SYSCALL_PERF_EVENT_OPEN if by_lsm(g::LSM_PERF_EVENT_OPEN) => {}
        g::SYSCALL_PTRACE | g::SYSCALL_PROCESS_VM_WRITEV if by_lsm(g::LSM_PTRACE_ACCESS_CHECK) => {}
        g::SYSCALL_MOUNT => on_mount(regs, &actor, false),
        g::SYSCALL_FSOPEN => on_mount(regs, &actor, true),
        g::SYSCALL_MKNOD | g::SYSCALL_MKNODAT => {
            // mknod(path, mode, dev), mknodat(dirfd, path, mode, dev)
            let first = if class == g::SYSCALL_MKNOD { 0 } else { 1 };
            let (path, mode, dev) = (arg(regs, first), arg(regs, first + 1), arg(regs, first + 2));
            // In block mode cgroup/dev refuses it and reports; do not report twice. The
            // record carries the device number (the mode is S_IFBLK by now).
            if mode & S_IFMT == S_IFBLK && report::mode(DETECTION_HOST_MOUNT) == GUARD_MODE_DETECT {
                simple(DETECTION_HOST_MOUNT, &actor, class, dev, path);
            }
        }
        g::SYSCALL_UNSHARE => {
            if arg(regs, 0) & CLONE_NEWUSER != 0 {
                simple(DETECTION_SETNS, &actor, class, arg(regs, 0), 0);
            }
        }
        g::SYSCALL_INIT_MODULE | g::SYSCALL_FINIT_MODULE | g::SYSCALL_BPF | g::SYSCALL_PERF_EVENT_OPEN => {
            simple(DETECTION_KERNEL_MODULE, &actor, class, arg(regs, 0), 0);
        }
        g::SYSCALL_PTRACE => {
            let request = arg(regs, 0);
            if matches!(request, PTRACE_ATTACH | PTRACE_SEIZE | PTRACE_POKETEXT | PTRACE_POKEDATA | PTRACE_POKEUSER) {
                targeted(&actor, class, request, arg(regs, 1) as u32);
            }
        }
        g::SYSCALL_PROCESS_VM_WRITEV => targeted(&actor, class, 0, arg(regs, 0) as u32),
        g::SYSCALL_SETNS if report::mode(DETECTION_SETNS) != GUARD_MODE_OFF => {
            // The namespaces the thread is in before: joining one it already shares with
            // the host (a hostPID pod's PID namespace, a cgroup namespace the runtime did
            // not unshare) is no escape. Taken back at sys_exit.
            let _ = GUARD_SETNS.insert(&bpf_get_current_pid_tgid(), &kernel::current_namespaces(), 0);
        }
        _ => {}
    }
    0
}

/// A detection whose evidence is the syscall (class in `arg`'s high half) and one argument,
/// with an optional user string (a path) as subject.
#[inline(always)]
fn simple(detection: u32, actor: &Actor, class: u32, value: u64, user_path: u64) {
    if report::mode(detection) == GUARD_MODE_OFF {
        return;
    }
    let Some(mut entry) = report::start(detection, GUARD_HOOK_SYS_ENTER, false, actor) else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved record; user strings go through probe_read_user_str.
    unsafe {
        (*event).arg = value;
        (*event).owner = class as u64;
        if user_path != 0 {
            let _ = bpf_probe_read_user_str_bytes(user_path as *const u8, &mut (*event).subject);
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn targeted(actor: &Actor, class: u32, request: u64, target: u32) {
    if report::mode(DETECTION_PTRACE) == GUARD_MODE_OFF {
        return;
    }
    let Some(mut entry) = report::start(DETECTION_PTRACE, GUARD_HOOK_SYS_ENTER, false, actor) else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record.
    unsafe {
        (*event).arg = request;
        (*event).owner = class as u64;
        (*event).target_pid = target;
        // The PID namespace `target` is a number in: the agent cannot read it from /proc
        // once the actor has exited, which a process_vm_writev caller does at once.
        (*event).ino = kernel::current_namespaces()[NS_PID] as u64;
    }
    entry.submit(0);
}

/// mount(source, target, fstype, flags, data) or fsopen(fstype, flags): cgroup filesystems
/// (release_agent), debugfs/tracefs/securityfs/bpf, proc/sys remounts and block devices.
/// The container runtime mounting the container's own /proc and cgroup2 is not an escape.
#[inline(always)]
fn on_mount(regs: usize, actor: &Actor, fsopen: bool) {
    if actor::is_runtime() {
        return;
    }
    let (source, target, fstype, flags) =
        if fsopen { (0, 0, arg(regs, 0), 0) } else { (arg(regs, 0), arg(regs, 1), arg(regs, 2), arg(regs, 3)) };
    let mut kind = [0u8; 16];
    // SAFETY: user string copy bounded by the buffer.
    let kind_len = if fstype != 0 {
        unsafe { bpf_probe_read_user_str_bytes(fstype as *const u8, &mut kind).map(|s| s.len()).unwrap_or(0) }
    } else {
        0
    };
    let mut head = [0u8; 8];
    let source_len = if source != 0 {
        unsafe { bpf_probe_read_user_str_bytes(source as *const u8, &mut head).map(|s| s.len()).unwrap_or(0) }
    } else {
        0
    };
    let mut dest = [0u8; 8];
    let dest_len = if target != 0 {
        unsafe { bpf_probe_read_user_str_bytes(target as *const u8, &mut dest).map(|s| s.len()).unwrap_or(0) }
    } else {
        0
    };
    let target_is_kernel_fs = starts(&dest, dest_len, b"/proc") || starts(&dest, dest_len, b"/sys");
    let detection = match mount::classify(&kind, kind_len, &head, source_len, flags, target_is_kernel_fs) {
        MountKind::CgroupFs => DETECTION_CGROUP_RELEASE_AGENT,
        MountKind::HostMount => DETECTION_HOST_MOUNT,
        MountKind::Normal => return,
    };
    if report::mode(detection) == GUARD_MODE_OFF {
        return;
    }
    let Some(mut entry) = report::start(detection, GUARD_HOOK_SYS_ENTER, false, actor) else { return };
    let event = entry.as_mut_ptr();
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
    entry.submit(0);
}

pub fn on_exit(ctx: &RawTracePointContext) -> u32 {
    let regs: u64 = ctx.arg(0);
    let regs = regs as usize;
    let ret: i64 = ctx.arg::<u64>(1) as i64;
    let Some(nr) = kernel::read::<u64>(regs, offset!(regs_syscall_nr)) else { return 0 };
    let class = class_of(nr);
    if class != g::SYSCALL_OPEN && class != g::SYSCALL_CONNECT && class != g::SYSCALL_SETNS {
        return 0;
    }
    let Some(settings) = actor::settings() else { return 0 };
    let Some(actor) = actor::current(&settings) else { return 0 };
    match class {
        g::SYSCALL_OPEN if ret >= 0 && settings.lsm_hooks & (1 << g::LSM_FILE_OPEN) == 0 => {
            let Some(opened) = kernel::fd_file(ret as u64) else { return 0 };
            if let Some(finding) = file::classify(opened, &settings, &actor, false) {
                let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
                // SAFETY: no arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                file::report(&finding, GUARD_HOOK_SYS_EXIT, false, &actor, tgid, now);
            }
        }
        g::SYSCALL_CONNECT => {
            let thread = bpf_get_current_pid_tgid();
            // SAFETY: plain-data key; the value is copied out before the entry is removed.
            if let Some(refusal) = unsafe { GUARD_UNIX_REFUSED.get(&thread) }.copied() {
                let _ = GUARD_UNIX_REFUSED.remove(&thread);
                if ret == -EPERM {
                    report_refusal(&refusal, &actor);
                }
            } else if ret == 0 || ret == -EINPROGRESS {
                on_connect(regs, &settings, &actor);
            }
        }
        g::SYSCALL_SETNS if actor.in_pod => {
            let thread = bpf_get_current_pid_tgid();
            // SAFETY: plain-data key; the value is copied out before the entry is removed.
            let before = unsafe { GUARD_SETNS.get(&thread) }.copied();
            let _ = GUARD_SETNS.remove(&thread);
            if ret == 0 {
                on_setns(regs, &settings, &actor, before);
            }
        }
        _ => {}
    }
    0
}

/// A connect cgroup/connect_unix refused: the runtime socket and the path the pod named.
#[inline(always)]
fn report_refusal(refusal: &UnixRefusal, actor: &Actor) {
    if let Some(mut entry) = report::start(DETECTION_RUNTIME_SOCKET, GUARD_HOOK_CONNECT_UNIX, true, actor) {
        let event = entry.as_mut_ptr();
        // SAFETY: the reserved record; the path is shorter than the subject.
        unsafe {
            (*event).dev = refusal.socket.dev;
            (*event).ino = refusal.socket.ino;
            (&mut (*event).subject)[..SOCKET_PATH_LEN].copy_from_slice(&refusal.path);
        }
        entry.submit(0);
    }
}

/// A pod reaching a container-runtime socket (matched by the listener's socket inode), or a
/// process that read the kubelet's credentials reaching an API server.
///
/// In block mode a pod only gets here through a path cgroup/connect_unix cannot match (a
/// symlink, a relative path, a kernel without that hook): the process is killed before it
/// returns from connect(), so it never sends the runtime a request.
#[inline(always)]
fn on_connect(regs: usize, settings: &GuardSettings, actor: &Actor) {
    let fd = kernel::read::<u64>(regs, offset!(regs_exit_arg0)).unwrap_or(u64::MAX);
    let by_lsm = settings.lsm_hooks & (1 << g::LSM_UNIX_STREAM_CONNECT) != 0;
    let mode = report::mode(DETECTION_RUNTIME_SOCKET);
    if actor.in_pod && !by_lsm && mode != GUARD_MODE_OFF {
        if let Some(peer) = kernel::fd_file(fd).and_then(kernel::unix_peer_id) {
            // SAFETY: plain-data key.
            let protected = unsafe { GUARD_FILES.get(&FileKey { dev: peer.dev, ino: peer.ino }) };
            if matches!(protected, Some(rule) if rule.class == FILE_RUNTIME_SOCKET) {
                // SAFETY: signals the current process, which is in a syscall.
                let killed = mode == GUARD_MODE_BLOCK && unsafe { bpf_send_signal(SIGKILL) } == 0;
                let action = if killed { GUARD_ACTION_KILLED } else { 0 };
                if let Some(mut entry) = report::start(DETECTION_RUNTIME_SOCKET, GUARD_HOOK_SYS_EXIT, false, actor) {
                    let event = entry.as_mut_ptr();
                    // SAFETY: the reserved record.
                    unsafe {
                        (*event).blocked = action;
                        (*event).dev = peer.dev;
                        (*event).ino = peer.ino;
                    }
                    entry.submit(0);
                }
                return;
            }
        }
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain-data key.
    if unsafe { GUARD_TAINTED.get(&tgid) }.is_none() || report::mode(DETECTION_KUBELET_API) == GUARD_MODE_OFF {
        return;
    }
    let sockaddr = arg(regs, 1);
    // SAFETY: user memory read through the helper.
    let Ok(family) = (unsafe { bpf_probe_read_user(sockaddr as *const u16) }) else { return };
    let mut key = Endpoint::default();
    if family == AF_INET {
        let Ok(raw) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }) else { return };
        key.port = u16::from_be_bytes([raw[2], raw[3]]);
        key.addr = ipv4_mapped([raw[4], raw[5], raw[6], raw[7]]);
    } else if family == AF_INET6 {
        let Ok(raw) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 24]) }) else { return };
        key.port = u16::from_be_bytes([raw[2], raw[3]]);
        let mut i = 0;
        while i < 16 {
            key.addr[i] = raw[8 + i];
            i += 1;
        }
    } else {
        return;
    }
    // SAFETY: plain-data key.
    if unsafe { GUARD_API_SERVERS.get(&key) }.is_none() {
        return;
    }
    let Some(mut entry) = report::start(DETECTION_KUBELET_API, GUARD_HOOK_SYS_EXIT, false, actor) else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record.
    unsafe {
        (*event).arg = key.port as u64;
        let mut i = 0;
        while i < 16 {
            (*event).subject[i] = key.addr[i];
            i += 1;
        }
    }
    entry.submit(0);
}

/// After a successful setns from a pod: which host namespaces it joined. An nsfs fd names
/// one namespace (its inode number is the namespace's); a pidfd joins the types in
/// `nstype`, compared with the task's namespaces afterwards. A host namespace the thread
/// was in already (`before`, from sys_enter) is no change: hostNetwork/hostPID pods share
/// those by design, and a runtime may leave e.g. the cgroup namespace shared.
#[inline(always)]
fn on_setns(regs: usize, settings: &GuardSettings, actor: &Actor, before: Option<[u32; NS_COUNT]>) {
    if report::mode(DETECTION_SETNS) == GUARD_MODE_OFF {
        return;
    }
    let fd = kernel::read::<u64>(regs, offset!(regs_exit_arg0)).unwrap_or(u64::MAX);
    let nstype = arg(regs, 1);
    let Some(target) = kernel::fd_file(fd).and_then(kernel::file_id) else { return };
    let mut joined: u64 = 0;
    let mut i = 0;
    if target.magic == NSFS_MAGIC {
        while i < NS_COUNT {
            if settings.host_ns[i] != 0 && settings.host_ns[i] as u64 == target.ino {
                joined |= 1 << i;
            }
            i += 1;
        }
    } else {
        let current = kernel::current_namespaces();
        let requested = [CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP];
        while i < NS_COUNT {
            if nstype & requested[i] != 0 && current[i] != 0 && current[i] == settings.host_ns[i] {
                joined |= 1 << i;
            }
            i += 1;
        }
    }
    if actor.flags & ACTOR_HOST_NETWORK != 0 {
        joined &= !(1 << NS_NET);
    }
    if actor.flags & ACTOR_HOST_PID != 0 {
        joined &= !(1 << NS_PID);
    }
    if let Some(before) = before {
        let mut i = 0;
        while i < NS_COUNT {
            if before[i] != 0 && before[i] == settings.host_ns[i] {
                joined &= !(1 << i);
            }
            i += 1;
        }
    }
    if joined == 0 {
        return;
    }
    let Some(mut entry) = report::start(DETECTION_SETNS, GUARD_HOOK_SYS_EXIT, false, actor) else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record.
    unsafe {
        (*event).arg = joined;
        (*event).owner = nstype;
        (*event).ino = target.ino;
    }
    entry.submit(0);
}

const NSFS_MAGIC: u64 = 0x6e73_6673;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;

/// sched_process_fork: a child of a tainted process is tainted too (`cat key | curl` runs
/// the reader and the client as siblings of one shell, but `sh -c 'read; curl'` as a child).
pub fn on_fork(ctx: &RawTracePointContext) -> u32 {
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let parent_tgid = kernel::task_tgid(parent as usize);
    // SAFETY: plain-data key.
    if let Some(when) = unsafe { GUARD_TAINTED.get(&parent_tgid) } {
        let when = *when;
        let child_tgid = kernel::task_tgid(child as usize);
        if child_tgid != parent_tgid {
            let _ = GUARD_TAINTED.insert(&child_tgid, &when, 0);
        }
    }
    0
}
