//! Facts about this machine: where cgroup v2 and bpffs are, how pod cgroups are laid out,
//! which network namespace a pod has.

pub mod cgroups;
pub mod kubelet;
pub mod mounts;
pub mod netns;
pub mod capabilities;
