//! The runtime guard: per-detection modes (config → `GUARD_MODES`), what each detection can
//! do on this kernel, and the decoding of the kernel's detection records into `Detection`s.
//!
//! Detections are listed in [`registry`]; `../../docs/design.md` (runtime guard) says how each
//! is seen and, where the kernel allows, refused.

pub mod config;
pub mod decode;
pub mod foreign;
pub mod kernel_maps;
pub mod node;
pub mod registry;
pub mod run;
pub mod socket_paths;
pub mod syscalls;

use aya::maps::Array;
use aya::Ebpf;
use moat_common::event::{GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF};
use moat_common::maps::names;
use serde::Serialize;

use crate::kernel::KernelError;

pub use config::{GuardConfig, GuardMode};
pub use decode::decode;
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

/// Each detection's configured and effective mode. `hooks`: the optional hooks attached —
/// BPF LSM (`LSM_*` bits; a detection blocks with LSM only when all of its hooks are) and
/// `registry::HOOK_*` bits.
pub fn statuses(config: &GuardConfig, hooks: u32) -> Vec<DetectionStatus> {
    DETECTIONS
        .iter()
        .map(|spec| {
            let configured = config.mode(spec);
            let bpf_lsm = !spec.lsm_hooks.is_empty() && spec.lsm_hooks.iter().all(|h| hooks & (1 << h) != 0);
            let (effective, note) = match (configured, spec.blocking, bpf_lsm) {
                (GuardMode::Block, Blocking::Lsm, false) => {
                    (GuardMode::Detect, format!("blocking needs BPF LSM ({}); detected by {}", spec.block_hooks, spec.detect_hooks))
                }
                (GuardMode::Block, Blocking::Partly { what }, false) => {
                    (GuardMode::Block, format!("blocks {what}; the rest needs BPF LSM and is detected by {}", spec.detect_hooks))
                }
                (GuardMode::Block, Blocking::Optional { bit, what }, false) if hooks & (1 << bit) != 0 => {
                    (GuardMode::Block, format!("blocked by {what}"))
                }
                (GuardMode::Block, Blocking::Optional { .. }, false) => (
                    GuardMode::Detect,
                    format!("blocking needs BPF LSM or cgroup/connect_unix (Linux 6.7+) ({}); detected by {}", spec.block_hooks, spec.detect_hooks),
                ),
                (GuardMode::Block, _, _) => (GuardMode::Block, format!("blocked by {}", spec.block_hooks)),
                (GuardMode::Detect, _, _) => (GuardMode::Detect, format!("detected by {}", spec.detect_hooks)),
                (GuardMode::Off, _, _) => (GuardMode::Off, "off".to_string()),
            };
            DetectionStatus { id: spec.id, configured, effective, note, severity: spec.severity }
        })
        .collect()
}

/// Without the detection tracepoints (no BTF layout, or attaching failed) detections that
/// only they see are off, and the others lose that part; `reason` says why.
pub fn without_tracepoints(statuses: &mut [DetectionStatus], reason: &str) {
    for status in statuses.iter_mut() {
        let Some(spec) = registry::by_id(status.id) else { continue };
        if status.effective == GuardMode::Off || spec.code == registry::FOREIGN_TENANT.code {
            continue;
        }
        match spec.blocking {
            Blocking::Lsm | Blocking::Optional { .. } if status.effective == GuardMode::Detect => {
                status.effective = GuardMode::Off;
                status.note = format!("unavailable: detection tracepoints not attached ({reason})");
            }
            _ => status.note = format!("{}; detection tracepoints not attached ({reason})", status.note),
        }
    }
}

/// Logs what each detection does on this kernel (once, after start-up probing).
pub fn log_modes(statuses: &[DetectionStatus]) {
    for status in statuses {
        if status.configured == GuardMode::Block && status.effective != GuardMode::Block {
            tracing::warn!(detection = status.id, mode = status.effective.name(), "{}", status.note);
        } else {
            tracing::info!(detection = status.id, mode = status.effective.name(), "{}", status.note);
        }
    }
}

/// Writes each detection's effective mode into `GUARD_MODES` (before the programs attach, so
/// they act on the configured modes from their first call) and logs what each can do.
pub fn write_modes(ebpf: &mut Ebpf, statuses: &[DetectionStatus]) -> Result<(), KernelError> {
    let map = ebpf.map_mut(names::GUARD_MODES).ok_or_else(|| KernelError::map(names::GUARD_MODES, "missing from the object"))?;
    let mut modes: Array<_, u32> = Array::try_from(map).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
    for status in statuses {
        let Some(spec) = DETECTIONS.iter().find(|s| s.id == status.id) else { continue };
        modes.set(spec.code, kernel_mode(status.effective), 0).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
