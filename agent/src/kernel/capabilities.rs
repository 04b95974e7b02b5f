//! What this kernel offers moat: BTF, cgroup hooks, and for the runtime guard BPF LSM, BPF
//! trampolines (fentry) and syscall tracepoints — found by attaching, shown by `moat status`.

use std::path::Path;

use serde::Serialize;

use super::btf_layout::BTF_PATH;
use super::guard_probes::GuardKernel;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// cgroup_skb and cgroup/sock_addr programs: `available` once attached.
    pub cgroup_hooks: String,
    /// The active LSMs (`/sys/kernel/security/lsm`), when readable.
    pub lsm_list: Option<String>,
    /// `active`, `inactive: <why>` or `unknown: <why>`.
    pub bpf_lsm: String,
    /// fentry/fexit: `available` or `unavailable: <why>` (`untried` when nothing needed them).
    pub trampolines: String,
    /// `syscalls/*` tracepoints, likewise.
    pub syscall_tracepoints: String,
    /// cgroup/connect_unix (Linux 6.7+): `attached`, `not needed`, or `unavailable: <why>`.
    pub cgroup_connect_unix: String,
}

/// What is known before anything is attached.
pub fn probe() -> Capabilities {
    let pending = || "not probed yet".to_string();
    Capabilities {
        btf: Path::new(BTF_PATH).exists(),
        cgroup_hooks: "not attached yet".into(),
        lsm_list: None,
        bpf_lsm: pending(),
        trampolines: pending(),
        syscall_tracepoints: pending(),
        cgroup_connect_unix: pending(),
    }
}

impl Capabilities {
    /// Takes in what planning the guard's hooks found.
    pub fn guard(&mut self, kernel: &GuardKernel, connect_unix: String) {
        self.lsm_list = kernel.lsm_list.clone();
        self.bpf_lsm = kernel.bpf_lsm.clone();
        self.trampolines = kernel.trampolines.clone();
        self.syscall_tracepoints = kernel.syscall_tracepoints.clone();
        self.cgroup_connect_unix = connect_unix;
    }
}
