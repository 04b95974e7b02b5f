//! Every detection the guard implements: its stable id, severity, the hooks that see and
//! block it, and whether blocking needs BPF LSM. The id is what operators configure, filter
//! on and alert on; never rename one.

use moat_common::event as code;
use moat_common::guard::{
    LSM_BPF, LSM_FILE_OPEN, LSM_KERNEL_LOAD_DATA, LSM_KERNEL_READ_FILE, LSM_PERF_EVENT_OPEN,
    LSM_PTRACE_ACCESS_CHECK, LSM_SB_MOUNT, LSM_UNIX_STREAM_CONNECT, LSM_USERNS_CREATE,
};

/// How a detection can stop the action on a kernel without BPF LSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// A hook that needs no LSM refuses it everywhere (cgroup_sysctl, cgroup_sock_addr...).
    Always,
    /// Only BPF LSM can refuse it; elsewhere it is detected.
    Lsm,
    /// Part of it is refused without LSM (`what`), the rest only with LSM.
    Partly { what: &'static str },
    /// Refused without LSM where an optional hook attached (`bit` of the attached-hooks
    /// mask, see [`HOOK_CGROUP_UNIX_CONNECT`]) by `what`; elsewhere only with LSM.
    Optional { bit: u32, what: &'static str },
}

/// Bit of the attached-hooks mask (above the `LSM_*` bits) for cgroup/connect_unix, which
/// only Linux 6.7+ has.
pub const HOOK_CGROUP_UNIX_CONNECT: u32 = 16;

/// One detection.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub id: &'static str,
    /// Index in `GUARD_MODES`, code in `GuardEvent::detection`.
    pub code: u32,
    pub severity: &'static str,
    /// The hooks that see it without LSM.
    pub detect_hooks: &'static str,
    /// The hooks that refuse it (LSM ones marked).
    pub block_hooks: &'static str,
    pub blocking: Blocking,
    /// The BPF LSM hooks (`guard::LSM_*`) that must all be attached for LSM blocking.
    pub lsm_hooks: &'static [u32],
}

pub const KERNEL_SYSCTL: Spec = Spec {
    id: "escape.kernel-sysctl",
    code: code::DETECTION_KERNEL_SYSCTL,
    severity: "critical",
    detect_hooks: "cgroup/sysctl; sys_exit open (uevent_helper)",
    block_hooks: "cgroup/sysctl; lsm/file_open (uevent_helper)",
    blocking: Blocking::Partly { what: "kernel/core_pattern and kernel/modprobe writes (cgroup/sysctl)" },
    lsm_hooks: &[LSM_FILE_OPEN],
};

pub const CGROUP_RELEASE_AGENT: Spec = Spec {
    id: "escape.cgroup-release-agent",
    code: code::DETECTION_CGROUP_RELEASE_AGENT,
    severity: "critical",
    detect_hooks: "sys_exit open (cgroup v1 release_agent/notify_on_release), sys_enter mount/fsopen (cgroup)",
    block_hooks: "lsm/file_open, lsm/sb_mount",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN, LSM_SB_MOUNT],
};

pub const HOST_MOUNT: Spec = Spec {
    id: "escape.host-mount",
    code: code::DETECTION_HOST_MOUNT,
    severity: "critical",
    detect_hooks: "sys_enter mount/fsopen, sys_enter mknod/mknodat",
    block_hooks: "cgroup/dev (block devices); lsm/sb_mount",
    blocking: Blocking::Partly { what: "mknod and open of block devices (cgroup/dev)" },
    lsm_hooks: &[LSM_SB_MOUNT],
};

pub const SETNS: Spec = Spec {
    id: "escape.setns",
    code: code::DETECTION_SETNS,
    severity: "critical",
    detect_hooks: "sys_exit setns (joined a host namespace), sys_enter unshare (user namespace)",
    block_hooks: "lsm/ptrace_access_check, lsm/userns_create",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN, LSM_USERNS_CREATE],
};

pub const RUNTIME_BINARY: Spec = Spec {
    id: "escape.runtime-binary",
    code: code::DETECTION_RUNTIME_BINARY,
    severity: "critical",
    detect_hooks: "sys_exit open (runtime binary inode, for writing)",
    block_hooks: "lsm/file_open",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN],
};

pub const RUNTIME_SOCKET: Spec = Spec {
    id: "escape.runtime-socket",
    code: code::DETECTION_RUNTIME_SOCKET,
    severity: "critical",
    detect_hooks: "sys_exit connect (peer socket inode)",
    block_hooks: "lsm/unix_stream_connect; cgroup/connect_unix with sys_exit connect",
    blocking: Blocking::Optional {
        bit: HOOK_CGROUP_UNIX_CONNECT,
        what: "cgroup/connect_unix (every path a pod reaches the socket by) and, for a path it cannot match (symlink, relative), killing the process at sys_exit connect",
    },
    lsm_hooks: &[LSM_UNIX_STREAM_CONNECT],
};

pub const KERNEL_MODULE: Spec = Spec {
    id: "escape.kernel-module",
    code: code::DETECTION_KERNEL_MODULE,
    severity: "critical",
    detect_hooks: "sys_enter init_module/finit_module/bpf/perf_event_open",
    block_hooks: "lsm/kernel_load_data, lsm/kernel_read_file, lsm/bpf, lsm/perf_event_open",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_KERNEL_READ_FILE, LSM_KERNEL_LOAD_DATA, LSM_BPF, LSM_PERF_EVENT_OPEN],
};

pub const PTRACE: Spec = Spec {
    id: "escape.ptrace",
    code: code::DETECTION_PTRACE,
    severity: "high",
    detect_hooks: "sys_enter ptrace/process_vm_writev, sys_exit open (/proc/PID/mem)",
    block_hooks: "lsm/ptrace_access_check",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_PTRACE_ACCESS_CHECK],
};

pub const KERNEL_MEMORY: Spec = Spec {
    id: "escape.kernel-memory",
    code: code::DETECTION_KERNEL_MEMORY,
    severity: "critical",
    detect_hooks: "sys_exit open (/proc/kcore, /proc/sysrq-trigger, debugfs, tracefs)",
    block_hooks: "lsm/file_open",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN],
};

pub const KUBELET_PKI: Spec = Spec {
    id: "cred.kubelet-pki",
    code: code::DETECTION_KUBELET_PKI,
    severity: "critical",
    detect_hooks: "sys_exit open (kubelet certificate/key/kubeconfig inodes)",
    block_hooks: "lsm/file_open",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN],
};

pub const OTHER_POD_VOLUME: Spec = Spec {
    id: "cred.other-pod-volume",
    code: code::DETECTION_OTHER_POD_VOLUME,
    severity: "high",
    detect_hooks: "sys_exit open (volume superblock → owning pod)",
    block_hooks: "lsm/file_open",
    blocking: Blocking::Lsm,
    lsm_hooks: &[LSM_FILE_OPEN],
};

pub const KUBELET_API: Spec = Spec {
    id: "cred.kubelet-api",
    code: code::DETECTION_KUBELET_API,
    severity: "high",
    detect_hooks: "cgroup/connect4, cgroup/connect6 (pods); sys_exit connect (host processes that read kubelet credentials)",
    block_hooks: "cgroup/connect4, cgroup/connect6",
    blocking: Blocking::Partly { what: "pods connecting to kubelet ports (cgroup/connect4/6)" },
    lsm_hooks: &[],
};

pub const FOREIGN_TENANT: Spec = Spec {
    id: "node.foreign-tenant",
    code: code::DETECTION_FOREIGN_TENANT,
    severity: "high",
    detect_hooks: "pod watch and node labels",
    block_hooks: "denying all of the pod's traffic (cgroup_skb, cgroup/connect, cgroup/sendmsg)",
    blocking: Blocking::Always,
    lsm_hooks: &[],
};

pub const DETECTIONS: [Spec; 13] = [
    KERNEL_SYSCTL,
    CGROUP_RELEASE_AGENT,
    HOST_MOUNT,
    SETNS,
    RUNTIME_BINARY,
    RUNTIME_SOCKET,
    KERNEL_MODULE,
    PTRACE,
    KERNEL_MEMORY,
    KUBELET_PKI,
    OTHER_POD_VOLUME,
    KUBELET_API,
    FOREIGN_TENANT,
];

pub fn by_id(id: &str) -> Option<&'static Spec> {
    DETECTIONS.iter().find(|s| s.id == id)
}

pub fn by_code(code: u32) -> Option<&'static Spec> {
    DETECTIONS.iter().find(|s| s.code == code)
}
