//! Facts about this machine: where cgroup v2 and bpffs are, how pod cgroups are laid out,
//! which network namespace a pod has.

pub mod cgroup_ns;
pub mod cgroups;
pub mod dir_watch;
pub mod host_root;
pub mod kubelet;
pub mod mount_watch;
pub mod mounts;
pub mod netns;

use std::time::Duration;

use crate::config::CgroupLayoutKind;

/// The pod cgroup tree's watch: directories come and go; a full scan every 10 s regardless.
pub fn cgroup_watch() -> dir_watch::DirWatch {
    dir_watch::DirWatch::new("pod cgroups", dir_watch::ENTRIES, Duration::from_secs(10))
}

/// The layout `cgroupLayout` names (`cgroups` defines the lab's, `kubelet` the kubelet's).
pub fn cgroup_layout(kind: CgroupLayoutKind) -> Box<dyn cgroups::CgroupLayout> {
    match kind {
        CgroupLayoutKind::Lab => Box::new(cgroups::LabLayout),
        CgroupLayoutKind::Kubelet => Box::new(kubelet::KubeletLayout),
    }
}
