//! The runtime guard: per-detection modes (config → `GUARD_MODES`), what each detection can
//! do on this kernel, and the decoding of the kernel's detection records into `Detection`s.
//!
//! First detection: `escape.kernel-sysctl`, a pod writing the host's `kernel/core_pattern` or
//! `kernel/modprobe` (a core dump or module request then runs a program of the attacker's
//! choosing as root on the host). The cgroup_sysctl program sees every sysctl access from the
//! pods' cgroups and refuses those writes with EPERM in block mode.

use aya::maps::Array;
use aya::Ebpf;
use moat_common::event::{
    GuardEvent, DETECTION_KERNEL_SYSCTL, GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF,
};
use moat_common::maps::names;
use serde::{Deserialize, Serialize};

use crate::compiler::Index;
use crate::events::record::Detection;
use crate::kernel::KernelError;

/// `guard:` in the agent configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuardConfig {
    /// `escape.kernel-sysctl`. Default `block`: cgroup_sysctl refuses the write on every
    /// kernel with cgroup BPF (no BPF LSM needed), and no legitimate pod writes the host's
    /// core_pattern or modprobe.
    pub kernel_sysctl: GuardMode,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self { kernel_sysctl: GuardMode::Block }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    Off,
    Detect,
    Block,
}

impl GuardMode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Detect => "detect",
            Self::Block => "block",
        }
    }

    const fn kernel(self) -> u32 {
        match self {
            Self::Off => GUARD_MODE_OFF,
            Self::Detect => GUARD_MODE_DETECT,
            Self::Block => GUARD_MODE_BLOCK,
        }
    }
}

/// One detection the guard implements.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub id: &'static str,
    /// Index in `GUARD_MODES`, code in `GuardEvent::detection`.
    pub code: u32,
    pub severity: &'static str,
    /// The hook that sees and blocks it, and whether blocking needs BPF LSM.
    pub hook: &'static str,
    pub block_needs_lsm: bool,
}

pub const KERNEL_SYSCTL: Spec = Spec {
    id: "escape.kernel-sysctl",
    code: DETECTION_KERNEL_SYSCTL,
    severity: "critical",
    hook: "cgroup/sysctl",
    block_needs_lsm: false,
};

pub const DETECTIONS: [Spec; 1] = [KERNEL_SYSCTL];

impl GuardConfig {
    pub fn mode(&self, spec: &Spec) -> GuardMode {
        match spec.code {
            DETECTION_KERNEL_SYSCTL => self.kernel_sysctl,
            _ => GuardMode::Off,
        }
    }
}

/// A detection as `moat status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DetectionStatus {
    pub id: &'static str,
    pub configured: GuardMode,
    /// What actually happens on this kernel: `block` only where the hook can block.
    pub effective: GuardMode,
    pub hook: &'static str,
    pub severity: &'static str,
}

/// Each detection's configured and effective mode. `bpf_lsm` is whether BPF LSM works here.
pub fn statuses(config: &GuardConfig, bpf_lsm: bool) -> Vec<DetectionStatus> {
    DETECTIONS
        .iter()
        .map(|spec| {
            let configured = config.mode(spec);
            let effective = if configured == GuardMode::Block && spec.block_needs_lsm && !bpf_lsm {
                GuardMode::Detect
            } else {
                configured
            };
            DetectionStatus { id: spec.id, configured, effective, hook: spec.hook, severity: spec.severity }
        })
        .collect()
}

/// Writes each detection's effective mode into `GUARD_MODES` (before the programs attach, so
/// they act on the configured modes from their first call) and logs what each can do.
pub fn write_modes(ebpf: &mut Ebpf, statuses: &[DetectionStatus]) -> Result<(), KernelError> {
    let map = ebpf.map_mut(names::GUARD_MODES).ok_or_else(|| KernelError::map(names::GUARD_MODES, "missing from the object"))?;
    let mut modes: Array<_, u32> = Array::try_from(map).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
    for status in statuses {
        let Some(spec) = DETECTIONS.iter().find(|s| s.id == status.id) else { continue };
        modes.set(spec.code, status.effective.kernel(), 0).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
        match (status.configured, status.effective) {
            (GuardMode::Off, _) => tracing::info!(detection = status.id, "detection off"),
            (GuardMode::Block, GuardMode::Block) => {
                tracing::info!(detection = status.id, hook = status.hook, "detection can block on this kernel: block")
            }
            (GuardMode::Block, _) => tracing::warn!(
                detection = status.id,
                hook = status.hook,
                "blocking needs BPF LSM, unavailable here: detect only"
            ),
            (_, mode) => tracing::info!(detection = status.id, hook = status.hook, mode = mode.name(), "detection can block on this kernel; configured to detect only"),
        }
    }
    Ok(())
}

/// NUL-padded kernel bytes to text.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Names a kernel detection record from the model: the acting pod by its cgroup.
pub fn decode(event: &GuardEvent, index: &Index) -> Detection {
    let spec = DETECTIONS.iter().find(|s| s.code == u32::from(event.detection));
    let pod = index.pods_by_cgroup.get(&event.cgroup);
    let tenant = pod.and_then(|p| index.pod_tenants.get(p)).map(ToString::to_string);
    let blocked = event.blocked != 0;
    let executable = text(&event.comm);
    let subject = text(&event.subject);
    let action = if blocked { "blocked" } else { "detected" };
    let what = match event.detection as u32 {
        DETECTION_KERNEL_SYSCTL => format!("write to /proc/sys/{subject}"),
        _ => format!("detection code {} on {subject}", event.detection),
    };
    Detection {
        id: spec.map(|s| s.id).unwrap_or("unknown").to_string(),
        mode: if blocked { GuardMode::Block } else { GuardMode::Detect }.name().to_string(),
        severity: spec.map(|s| s.severity).unwrap_or("unknown").to_string(),
        tenant,
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        pid: Some(event.tgid),
        executable: Some(executable.clone()),
        evidence: Some(format!("/proc/sys/{subject}")),
        action: action.to_string(),
        message: format!("{what} by pid {} ({executable}): {action}", event.tgid),
    }
}

#[cfg(test)]
mod tests;
