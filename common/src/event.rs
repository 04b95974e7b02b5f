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
    /// For a ClusterNetworkPolicy verdict: the deciding rule's position in `policy_set`.
    pub rule_position: u32,
    /// For a NetworkPolicy deny: the local pod's isolating policy set; for a
    /// ClusterNetworkPolicy verdict, the local pod's tier set.
    pub policy_set: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (size asserted below).
unsafe impl aya::Pod for FlowEvent {}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 88);

/// A runtime-guard detection (`GuardEvent`), sent through the same `EVENTS` ring buffer as
/// flow events: every record starts with its kind byte, so the reader tells them apart.
pub const EVENT_KIND_DETECTION: u8 = 3;

/// Detection codes: the index into the `GUARD_MODES` map and the code in a `GuardEvent`.
/// The agent's `detections` catalogue names them; never reuse a code.
pub const DETECTION_KERNEL_SYSCTL: u32 = 1;
pub const DETECTION_CGROUP_RELEASE_AGENT: u32 = 2;
pub const DETECTION_HOST_MOUNT: u32 = 3;
pub const DETECTION_SETNS: u32 = 4;
pub const DETECTION_RUNTIME_BINARY: u32 = 5;
pub const DETECTION_RUNTIME_SOCKET: u32 = 6;
pub const DETECTION_KERNEL_MODULE: u32 = 7;
pub const DETECTION_PTRACE: u32 = 8;
pub const DETECTION_KERNEL_MEMORY: u32 = 9;
pub const DETECTION_KUBELET_PKI: u32 = 10;
pub const DETECTION_OTHER_POD_VOLUME: u32 = 11;
pub const DETECTION_KUBELET_API: u32 = 12;
pub const DETECTION_FOREIGN_TENANT: u32 = 13;
/// Slots in `GUARD_MODES` (code 0 is never used).
pub const DETECTION_SLOTS: u32 = 16;

/// `GUARD_MODES` values.
pub const GUARD_MODE_OFF: u32 = 0;
pub const GUARD_MODE_DETECT: u32 = 1;
pub const GUARD_MODE_BLOCK: u32 = 2;

/// `GuardEvent::hook`: which program saw it.
pub const GUARD_HOOK_SYSCTL: u8 = 1;
pub const GUARD_HOOK_SYS_ENTER: u8 = 2;
pub const GUARD_HOOK_SYS_EXIT: u8 = 3;
pub const GUARD_HOOK_DEVICE: u8 = 4;
pub const GUARD_HOOK_CONNECT: u8 = 5;
pub const GUARD_HOOK_LSM: u8 = 6;
pub const GUARD_HOOK_CONNECT_UNIX: u8 = 7;
/// An fentry program at a `security_*` function: it sees what BPF LSM would, but cannot
/// refuse (the kernel has trampolines, not an active BPF LSM).
pub const GUARD_HOOK_FENTRY: u8 = 8;

/// `GuardEvent::evidence`: which fields of the record carry what (independent of the hook
/// that saw it, since one action is seen by different hooks on different kernels).
/// A file: `dev`/`ino`, superblock magic in `arg`, its dentry name and parent's in `subject`.
pub const EVIDENCE_FILE: u8 = 1;
/// A mount: `subject` = fstype | source | target, flags in `arg`, the call in `owner`.
pub const EVIDENCE_MOUNT: u8 = 2;
/// mknod: the path in `subject`, the device number (userspace encoding) in `arg`.
pub const EVIDENCE_MKNOD: u8 = 3;
/// cgroup/dev: the device in `dev` (kernel encoding), access type in `arg`.
pub const EVIDENCE_DEVICE: u8 = 4;
/// A call: which (`SYSCALL_*`) in `owner`, its first argument in `arg`.
pub const EVIDENCE_CALL: u8 = 5;
/// A call on another process: `target_pid` in the PID namespace whose inode is in `ino`,
/// the request in `arg`, the call in `owner`.
pub const EVIDENCE_TARGET: u8 = 6;
/// A setns from a pod: the fd's filesystem magic in `arg` and inode in `ino`, nstype in
/// `owner`, the `NS_*` mask of namespaces the pod shares with the host by design
/// (hostNetwork, hostPID) in `target_pid`, and in `subject` the thread's namespace inodes
/// before and after (`NS_COUNT` u32 each, `NS_*` order). The agent works out which host
/// namespaces were joined.
pub const EVIDENCE_NAMESPACES: u8 = 7;
/// A runtime socket: `dev`/`ino`; `subject` the path a refused connect named.
pub const EVIDENCE_SOCKET: u8 = 8;
/// A network endpoint: IPv4-mapped address in `subject[..16]`, port in `arg`.
pub const EVIDENCE_ADDRESS: u8 = 9;
/// A sysctl: its name in `subject`.
pub const EVIDENCE_SYSCTL: u8 = 10;

/// `GuardEvent::blocked` when the action went through and the process was then killed
/// (before it could use what it got).
pub const GUARD_ACTION_KILLED: u8 = 2;

pub const COMM_LEN: usize = 16;
/// Bytes of the executable's file name kept.
pub const EXE_NAME_LEN: usize = 32;
/// Bytes of evidence text kept; longer text is cut.
pub const SUBJECT_LEN: usize = 128;
/// Bytes of a sysctl name kept (`kernel/core_pattern`); longer names are cut.
pub const SYSCTL_NAME_LEN: usize = 64;
/// For mounts the subject holds three NUL-padded fields: fstype, source, target.
pub const MOUNT_FSTYPE_LEN: usize = 32;
pub const MOUNT_SOURCE_LEN: usize = 48;
pub const MOUNT_TARGET_LEN: usize = 48;

/// A process did something a detection names.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardEvent {
    /// `EVENT_KIND_DETECTION`
    pub kind: u8,
    /// `DETECTION_*` as u8.
    pub detection: u8,
    /// 1: the kernel refused the operation (mode block); `GUARD_ACTION_KILLED`: it went
    /// through and the process was killed; 0: reported only.
    pub blocked: u8,
    /// `GUARD_HOOK_*`
    pub hook: u8,
    /// `EVIDENCE_*`
    pub evidence: u8,
    pub _pad: [u8; 3],
    pub timestamp_ns: u64,
    /// cgroup of the acting task: identifies the pod (or the host service).
    pub cgroup: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// The parent process's tgid.
    pub ppid: u32,
    /// A target process as the actor named it (ptrace, process_vm_writev, /proc/PID/mem),
    /// in the actor's PID namespace.
    pub target_pid: u32,
    /// The file touched: its superblock's device (kernel encoding, MAJOR << 20 | MINOR) and
    /// inode; 0 when none. A sys_enter ptrace/process_vm_writev record has the actor's PID
    /// namespace inode in `ino` (the namespace `target_pid` is in).
    pub dev: u64,
    pub ino: u64,
    /// Per detection: open flags, mount flags, namespace type, syscall number, port...
    pub arg: u64,
    /// Per detection: the owning pod's tag (another pod's volume), a namespace inode...
    pub owner: u64,
    /// The task's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The executable the task ran when it acted (its file's superblock device in kernel
    /// encoding, inode and name), so a later exec cannot change who is named.
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub exe_name: [u8; EXE_NAME_LEN],
    /// What was touched, as text: a sysctl or file name, a syscall, a mount's fields.
    pub subject: [u8; SUBJECT_LEN],
}

impl Default for GuardEvent {
    fn default() -> Self {
        Self {
            kind: EVENT_KIND_DETECTION,
            detection: 0,
            blocked: 0,
            hook: 0,
            evidence: 0,
            _pad: [0; 3],
            timestamp_ns: 0,
            cgroup: 0,
            pid: 0,
            tgid: 0,
            ppid: 0,
            target_pid: 0,
            dev: 0,
            ino: 0,
            arg: 0,
            owner: 0,
            comm: [0; COMM_LEN],
            exe_dev: 0,
            exe_ino: 0,
            exe_name: [0; EXE_NAME_LEN],
            subject: [0; SUBJECT_LEN],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for GuardEvent {}

const _: () = assert!(core::mem::size_of::<GuardEvent>() == 264);
