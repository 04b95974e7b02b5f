//! The runtime guard's catalogue: every detection it implements — its stable id, severity,
//! the probes that see it, and what refuses it (hooks that need no BPF LSM, or the probes
//! that must be attached as BPF LSM). Plain data that configuration, compiler, kernel, guard
//! and events all name detections by. The id is what operators configure, filter on and
//! alert on; never rename one. How each probe is attached is `kernel::guard_probes`.

use moat_common::event as code;
use serde::Serialize;

/// What a detection needs seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    FileOpen,
    Mount,
    Fsopen,
    Mknod,
    UserNamespace,
    ModuleLoad,
    Bpf,
    PerfEvent,
    Ptrace,
    Setns,
    UnixConnect,
    /// Reports what cgroup/connect_unix refused (that program cannot report itself).
    ConnectRefusals,
    ApiConnect,
    /// Taint inheritance for `cred.kubelet-api`.
    Fork,
}

impl Probe {
    pub const ALL: [Probe; 14] = [
        Probe::FileOpen,
        Probe::Mount,
        Probe::Fsopen,
        Probe::Mknod,
        Probe::UserNamespace,
        Probe::ModuleLoad,
        Probe::Bpf,
        Probe::PerfEvent,
        Probe::Ptrace,
        Probe::Setns,
        Probe::UnixConnect,
        Probe::ConnectRefusals,
        Probe::ApiConnect,
        Probe::Fork,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Probe::FileOpen => "file-open",
            Probe::Mount => "mount",
            Probe::Fsopen => "fsopen",
            Probe::Mknod => "mknod",
            Probe::UserNamespace => "user-namespace",
            Probe::ModuleLoad => "module-load",
            Probe::Bpf => "bpf",
            Probe::PerfEvent => "perf-event",
            Probe::Ptrace => "ptrace",
            Probe::Setns => "setns",
            Probe::UnixConnect => "unix-connect",
            Probe::ConnectRefusals => "connect-refusals",
            Probe::ApiConnect => "api-connect",
            Probe::Fork => "fork",
        }
    }
}

/// One detection.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub id: &'static str,
    /// Index in `GUARD_MODES`, code in `GuardEvent::detection`.
    pub code: u32,
    pub severity: &'static str,
    /// What must be seen (attached while the detection is not off).
    pub probes: &'static [Probe],
    /// What hooks that every kernel has refuse (cgroup programs), if any.
    pub always_refused: Option<&'static str>,
    /// The probes that must all be attached as BPF LSM for all of it to be refused.
    pub lsm_refuses: &'static [Probe],
}

pub const KERNEL_SYSCTL: Spec = Spec {
    id: "escape.kernel-sysctl",
    code: code::DETECTION_KERNEL_SYSCTL,
    severity: "critical",
    probes: &[Probe::FileOpen],
    always_refused: Some("kernel/core_pattern and kernel/modprobe writes (cgroup/sysctl)"),
    lsm_refuses: &[Probe::FileOpen],
};

pub const CGROUP_RELEASE_AGENT: Spec = Spec {
    id: "escape.cgroup-release-agent",
    code: code::DETECTION_CGROUP_RELEASE_AGENT,
    severity: "critical",
    probes: &[Probe::FileOpen, Probe::Mount, Probe::Fsopen],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen, Probe::Mount],
};

pub const HOST_MOUNT: Spec = Spec {
    id: "escape.host-mount",
    code: code::DETECTION_HOST_MOUNT,
    severity: "critical",
    probes: &[Probe::Mount, Probe::Fsopen, Probe::Mknod],
    always_refused: Some("mknod and open of block devices (cgroup/dev)"),
    lsm_refuses: &[Probe::Mount],
};

pub const SETNS: Spec = Spec {
    id: "escape.setns",
    code: code::DETECTION_SETNS,
    severity: "critical",
    probes: &[Probe::FileOpen, Probe::UserNamespace, Probe::Setns],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen, Probe::UserNamespace],
};

pub const RUNTIME_BINARY: Spec = Spec {
    id: "escape.runtime-binary",
    code: code::DETECTION_RUNTIME_BINARY,
    severity: "critical",
    probes: &[Probe::FileOpen],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen],
};

pub const RUNTIME_SOCKET: Spec = Spec {
    id: "escape.runtime-socket",
    code: code::DETECTION_RUNTIME_SOCKET,
    severity: "critical",
    probes: &[Probe::UnixConnect, Probe::ConnectRefusals],
    always_refused: None,
    lsm_refuses: &[Probe::UnixConnect],
};

pub const KERNEL_MODULE: Spec = Spec {
    id: "escape.kernel-module",
    code: code::DETECTION_KERNEL_MODULE,
    severity: "critical",
    probes: &[Probe::ModuleLoad, Probe::Bpf, Probe::PerfEvent],
    always_refused: None,
    lsm_refuses: &[Probe::ModuleLoad, Probe::Bpf, Probe::PerfEvent],
};

pub const PTRACE: Spec = Spec {
    id: "escape.ptrace",
    code: code::DETECTION_PTRACE,
    severity: "high",
    probes: &[Probe::Ptrace, Probe::FileOpen],
    always_refused: None,
    lsm_refuses: &[Probe::Ptrace, Probe::FileOpen],
};

pub const KERNEL_MEMORY: Spec = Spec {
    id: "escape.kernel-memory",
    code: code::DETECTION_KERNEL_MEMORY,
    severity: "critical",
    probes: &[Probe::FileOpen],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen],
};

pub const KUBELET_PKI: Spec = Spec {
    id: "cred.kubelet-pki",
    code: code::DETECTION_KUBELET_PKI,
    severity: "critical",
    probes: &[Probe::FileOpen],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen],
};

pub const OTHER_POD_VOLUME: Spec = Spec {
    id: "cred.other-pod-volume",
    code: code::DETECTION_OTHER_POD_VOLUME,
    severity: "high",
    probes: &[Probe::FileOpen],
    always_refused: None,
    lsm_refuses: &[Probe::FileOpen],
};

pub const KUBELET_API: Spec = Spec {
    id: "cred.kubelet-api",
    code: code::DETECTION_KUBELET_API,
    severity: "high",
    probes: &[Probe::ApiConnect, Probe::Fork, Probe::FileOpen],
    always_refused: Some("pods connecting to kubelet ports (cgroup/connect4/6)"),
    lsm_refuses: &[],
};

pub const FOREIGN_TENANT: Spec = Spec {
    id: "node.foreign-tenant",
    code: code::DETECTION_FOREIGN_TENANT,
    severity: "high",
    probes: &[],
    always_refused: Some("all of the pod's traffic, both ways (cgroup_skb, cgroup/connect, cgroup/sendmsg)"),
    lsm_refuses: &[],
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
