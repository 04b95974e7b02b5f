//! Who is acting: a pod (known to the model by cgroup, or only by being below the pods'
//! cgroup root), the kubelet, or another host process.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};
use moat_common::guard::{GuardSettings, ACTOR_EXEMPT, FILE_RUNTIME_BINARY, FileKey};

use super::kernel;
use crate::maps::{GUARD_ACTORS, GUARD_FILES, GUARD_SETTINGS};

#[derive(Clone, Copy)]
pub struct Actor {
    pub cgroup: u64,
    /// The pod's tag, 0 for a host process or a pod the model does not know yet.
    pub pod: u64,
    pub in_pod: bool,
    /// `ACTOR_*` flags of a known pod.
    pub flags: u32,
}

#[inline(always)]
pub fn settings() -> Option<GuardSettings> {
    let settings = GUARD_SETTINGS.get(0)?;
    if settings.ready == 0 || !kernel::layout_filled() {
        return None;
    }
    Some(*settings)
}

/// The current task as an actor. `None` when it is exempt (the agent's own pod, exempt
/// namespaces): exempt actors are never reported.
#[inline(always)]
pub fn current(settings: &GuardSettings) -> Option<Actor> {
    if settings.agent_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == settings.agent_tgid {
        return None;
    }
    // SAFETY: helpers without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if let Some(known) = unsafe { GUARD_ACTORS.get(&cgroup) } {
        if known.flags & ACTOR_EXEMPT != 0 {
            return None;
        }
        return Some(Actor { cgroup, pod: known.pod, in_pod: true, flags: known.flags });
    }
    let in_pod = settings.pods_root_cgroup != 0
        && unsafe { bpf_get_current_ancestor_cgroup_id(settings.pods_root_level as i32) }
            == settings.pods_root_cgroup
        && cgroup != settings.pods_root_cgroup;
    Some(Actor { cgroup, pod: 0, in_pod, flags: 0 })
}

/// The kubelet: its executable's inode and, when configured, its cgroup — never its name.
#[inline(always)]
pub fn is_kubelet(settings: &GuardSettings, actor: &Actor) -> bool {
    if settings.kubelet_exe_ino == 0 || actor.in_pod {
        return false;
    }
    if settings.kubelet_cgroup != 0 && actor.cgroup != settings.kubelet_cgroup {
        return false;
    }
    matches!(kernel::current_exe(), Some(exe) if exe.dev == settings.kubelet_exe_dev && exe.ino == settings.kubelet_exe_ino)
}

/// The container runtime setting a container up (runc init mounts /proc, cgroup2... inside
/// the container's cgroup before the workload runs): its executable is a runtime binary.
#[inline(always)]
pub fn is_runtime() -> bool {
    let Some(exe) = kernel::current_exe() else { return false };
    // SAFETY: plain-data key.
    matches!(unsafe { GUARD_FILES.get(&FileKey { dev: exe.dev, ino: exe.ino }) }, Some(rule) if rule.class == FILE_RUNTIME_BINARY)
}
