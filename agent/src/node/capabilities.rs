//! What this kernel offers moat: BTF, cgroup hooks, BPF LSM (the runtime guard needs it).

use std::path::Path;

use aya::programs::{LsmAttachType, ProgramType};
use serde::Serialize;

use crate::kernel::error_chain as chain;

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// `available`, or `unavailable: <why>` (loading a trivial LSM program failed).
    pub bpf_lsm: String,
    /// The active LSMs (`/sys/kernel/security/lsm`), when readable.
    pub lsm_list: Option<String>,
    /// cgroup_skb and cgroup/sock_addr programs: `available` once attached.
    pub cgroup_hooks: String,
}

/// Probes once at start. Loading the LSM program needs root; failing is a finding, not an
/// error.
pub fn probe() -> Capabilities {
    let lsm_list = std::fs::read_to_string("/sys/kernel/security/lsm").ok().map(|s| s.trim().to_string());
    let bpf_lsm = match aya::sys::is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
        Ok(true) if lsm_list.as_deref().is_none_or(|l| l.split(',').any(|m| m == "bpf")) => "available".into(),
        Ok(true) => "unavailable: bpf is not in the active LSM list (boot with lsm=...,bpf)".into(),
        Ok(false) => "unavailable: the kernel does not support BPF LSM programs".into(),
        Err(error) => format!("unavailable: loading a trivial LSM program failed: {}", chain(&error)),
    };
    Capabilities { btf: Path::new(BTF_PATH).exists(), bpf_lsm, lsm_list, cgroup_hooks: "not attached yet".into() }
}

