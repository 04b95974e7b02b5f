//! Facts about this machine: where cgroup v2 and bpffs are, how pod cgroups are laid out,
//! which network namespace a pod has.

pub mod cgroup_watch;
pub mod cgroups;
pub mod kubelet;
pub mod mounts;
pub mod netns;

use crate::config::CgroupLayoutKind;

/// The layout `cgroupLayout` names (`cgroups` defines the lab's, `kubelet` the kubelet's).
pub fn cgroup_layout(kind: CgroupLayoutKind) -> Box<dyn cgroups::CgroupLayout> {
    match kind {
        CgroupLayoutKind::Lab => Box::new(cgroups::LabLayout),
        CgroupLayoutKind::Kubelet => Box::new(kubelet::KubeletLayout),
    }
}
