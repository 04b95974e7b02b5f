//! The runtime guard: per-detection modes (config → `GUARD_MODES`), what each detection can
//! do on this kernel, and the decoding of the kernel's detection records into `Detection`s.
//!
//! Detections are listed in [`registry`]; `../../docs/design.md` (runtime guard) says how each
//! is seen and, where the kernel allows, refused.

pub mod config;
pub mod registry;

use aya::maps::Array;
use aya::Ebpf;
use moat_common::event::{GuardEvent, DETECTION_KERNEL_SYSCTL, GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF};
use moat_common::maps::names;
use serde::Serialize;

use crate::compiler::Index;
use crate::events::record::Detection;
use crate::kernel::KernelError;

pub use config::{GuardConfig, GuardMode};
pub use registry::{Blocking, Spec, DETECTIONS};

const fn kernel_mode(mode: GuardMode) -> u32 {
    match mode {
        GuardMode::Off => GUARD_MODE_OFF,
        GuardMode::Detect => GUARD_MODE_DETECT,
        GuardMode::Block => GUARD_MODE_BLOCK,
    }
}

/// A detection as `moat status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DetectionStatus {
    pub id: &'static str,
    pub configured: GuardMode,
    /// What actually happens on this kernel: `block` only where the hook can block.
    pub effective: GuardMode,
    /// What blocks it, and what is only detected, on this kernel.
    pub note: String,
    pub severity: &'static str,
}

/// Each detection's configured and effective mode. `bpf_lsm` is whether BPF LSM works here.
pub fn statuses(config: &GuardConfig, bpf_lsm: bool) -> Vec<DetectionStatus> {
    DETECTIONS
        .iter()
        .map(|spec| {
            let configured = config.mode(spec);
            let (effective, note) = match (configured, spec.blocking, bpf_lsm) {
                (GuardMode::Block, Blocking::Lsm, false) => {
                    (GuardMode::Detect, format!("blocking needs BPF LSM ({}); detected by {}", spec.block_hooks, spec.detect_hooks))
                }
                (GuardMode::Block, Blocking::Partly { what }, false) => {
                    (GuardMode::Block, format!("blocks {what}; the rest needs BPF LSM and is detected by {}", spec.detect_hooks))
                }
                (GuardMode::Block, _, _) => (GuardMode::Block, format!("blocked by {}", spec.block_hooks)),
                (GuardMode::Detect, _, _) => (GuardMode::Detect, format!("detected by {}", spec.detect_hooks)),
                (GuardMode::Off, _, _) => (GuardMode::Off, "off".to_string()),
            };
            DetectionStatus { id: spec.id, configured, effective, note, severity: spec.severity }
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
        modes.set(spec.code, kernel_mode(status.effective), 0).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
        if status.configured == GuardMode::Block && status.effective != GuardMode::Block {
            tracing::warn!(detection = status.id, mode = status.effective.name(), "{}", status.note);
        } else {
            tracing::info!(detection = status.id, mode = status.effective.name(), "{}", status.note);
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
    let spec = registry::by_code(u32::from(event.detection));
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
