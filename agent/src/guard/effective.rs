//! What each detection does on this kernel: which probes it needs (so unused ones are never
//! attached), and — from how they attached — its effective mode and the hooks behind it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{GuardConfig, GuardMode};
use crate::detections::{self, Spec, DETECTIONS};
use crate::detections::Probe;
use crate::kernel::guard_probes::{Kind, ProbeStatus};

/// What attached: each probe's status, and cgroup/connect_unix (Linux 6.7+).
#[derive(Clone, Debug, Default)]
pub struct Attached {
    pub probes: BTreeMap<Probe, ProbeStatus>,
    pub connect_unix: bool,
}

impl Attached {
    fn kind(&self, probe: Probe) -> Option<Kind> {
        self.probes.get(&probe).and_then(|s| s.kind)
    }

    fn hooks(&self, probes: &[Probe]) -> Vec<String> {
        let mut seen = BTreeSet::new();
        probes
            .iter()
            .filter_map(|p| self.probes.get(p))
            .flat_map(|s| s.hooks.iter().cloned())
            .filter(|h| seen.insert(h.clone()))
            .collect()
    }

    fn fallbacks(&self, probes: &[Probe]) -> Vec<String> {
        probes.iter().filter_map(|p| self.probes.get(p)).flat_map(|s| s.fallbacks.iter().cloned()).collect()
    }
}

/// The probes the configured detections need. `mknod` only matters in detect mode of
/// `escape.host-mount` (in block mode cgroup/dev refuses and reports); the connect-refusal
/// reporter only where cgroup/connect_unix refuses.
pub fn wanted(config: &GuardConfig, connect_unix: bool) -> BTreeSet<Probe> {
    let mut wanted = BTreeSet::new();
    for spec in DETECTIONS.iter() {
        let mode = config.mode(spec);
        if mode == GuardMode::Off {
            continue;
        }
        for probe in spec.probes {
            let needed = match probe {
                Probe::Mknod => mode == GuardMode::Detect,
                Probe::ConnectRefusals => connect_unix && mode == GuardMode::Block,
                _ => true,
            };
            if needed {
                wanted.insert(*probe);
            }
        }
    }
    wanted
}

/// A detection as `moat status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DetectionStatus {
    pub id: &'static str,
    pub configured: GuardMode,
    /// What actually happens on this kernel: `block` only where a hook refuses.
    pub effective: GuardMode,
    /// What refuses it, and what is only detected, on this kernel.
    pub note: String,
    /// The hooks this detection holds (`lsm/file_open`, `tracepoint/syscalls/...`).
    pub hooks: Vec<String>,
    pub severity: &'static str,
}

pub fn statuses(config: &GuardConfig, attached: &Attached) -> Vec<DetectionStatus> {
    DETECTIONS.iter().map(|spec| status(spec, config.mode(spec), attached)).collect()
}

fn status(spec: &Spec, configured: GuardMode, attached: &Attached) -> DetectionStatus {
    let mut hooks = attached.hooks(spec.probes);
    if spec.code == detections::RUNTIME_SOCKET.code && attached.connect_unix {
        hooks.insert(0, "cgroup/connect_unix".into());
    }
    let seen = !hooks.is_empty();
    let detected_by = if seen { hooks.join(", ") } else { "nothing".into() };
    let lsm = !spec.lsm_refuses.is_empty() && spec.lsm_refuses.iter().all(|p| attached.kind(*p) == Some(Kind::Lsm));
    let (effective, note) = match configured {
        GuardMode::Off => (GuardMode::Off, "off".to_string()),
        _ if !seen && spec.always_refused.is_none() => {
            let why = attached.fallbacks(spec.probes).join("; ");
            (GuardMode::Off, format!("unavailable: no probe attaches on this kernel ({why})"))
        }
        GuardMode::Detect => (GuardMode::Detect, format!("detected by {detected_by}")),
        GuardMode::Block if lsm => (GuardMode::Block, format!("refused by {}", attached.hooks(spec.lsm_refuses).join(", "))),
        GuardMode::Block if spec.code == detections::RUNTIME_SOCKET.code && attached.connect_unix => (
            GuardMode::Block,
            format!("refused by cgroup/connect_unix by every path the pod's mounts give it; through any other path (a symlink) the process is killed before connect() returns ({detected_by})"),
        ),
        GuardMode::Block => match spec.always_refused {
            Some(what) if spec.probes.is_empty() => (GuardMode::Block, format!("refuses {what}")),
            Some(what) => (GuardMode::Block, format!("refuses {what}; the rest needs BPF LSM and is detected by {detected_by}")),
            None if spec.code == detections::RUNTIME_SOCKET.code => (
                GuardMode::Detect,
                format!("refusing needs BPF LSM or cgroup/connect_unix (Linux 6.7+); detected by {detected_by}, and the process is killed before connect() returns"),
            ),
            None => (GuardMode::Detect, format!("refusing needs BPF LSM; detected by {detected_by}")),
        },
    };
    DetectionStatus { id: spec.id, configured, effective, note, hooks, severity: spec.severity }
}
