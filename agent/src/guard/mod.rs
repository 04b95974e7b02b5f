//! The runtime guard on this node: per-detection modes (config → `GUARD_MODES`), what each
//! detection can do on this kernel, what the node holds that the guard protects (the
//! kubelet's files, pods' volumes, the runtime's binaries and sockets) in the guard's maps,
//! and what the event decoder needs to name it (`view`). Its records become `Detection`s in
//! `events::detection`.
//!
//! Detections are listed in `crate::detections`; `../../docs/design.md` (runtime guard) says
//! how each is seen and, where the kernel allows, refused.

pub mod devices;
pub mod effective;
pub mod hooks;
pub mod kernel_maps;
pub mod node;
pub mod run;
pub mod socket_paths;
pub mod syscalls;
pub mod view;

use aya::maps::Array;
use aya::Ebpf;
use moat_common::event::{GUARD_MODE_BLOCK, GUARD_MODE_DETECT, GUARD_MODE_OFF};
use moat_common::maps::names;

use crate::config::{GuardConfig, GuardMode};
use crate::detections::DETECTIONS;
use crate::kernel::KernelError;

pub use effective::{statuses, wanted, Attached, DetectionStatus};

const fn kernel_mode(mode: GuardMode) -> u32 {
    match mode {
        GuardMode::Off => GUARD_MODE_OFF,
        GuardMode::Detect => GUARD_MODE_DETECT,
        GuardMode::Block => GUARD_MODE_BLOCK,
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

/// Writes each detection's configured mode into `GUARD_MODES`, before the programs attach so
/// they act on it from their first call. Each program does with it what its hook can: a BPF
/// LSM or cgroup program refuses in block mode, the others report (the effective mode in
/// `moat status` says which applies on this kernel).
pub fn write_modes(ebpf: &mut Ebpf, config: &GuardConfig) -> Result<(), KernelError> {
    let map = ebpf.map_mut(names::GUARD_MODES).ok_or_else(|| KernelError::map(names::GUARD_MODES, "missing from the object"))?;
    let mut modes: Array<_, u32> = Array::try_from(map).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
    for spec in DETECTIONS.iter() {
        modes.set(spec.code, kernel_mode(config.mode(spec)), 0).map_err(|e| KernelError::map(names::GUARD_MODES, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
