//! The kubelet's pod cgroups under cgroup v2, keyed by pod UID.
//!
//! systemd driver (root `kubepods.slice`):
//! - Guaranteed: `kubepods-pod<uid>.slice/<container>`
//! - Burstable: `kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/<container>`
//! - BestEffort: `kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/<container>`
//!
//! where systemd spells the UID with `_` for `-`, and containers are
//! `cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` / `crio-conmon-<id>.scope`
//! (CRI-O) or `docker-<id>.scope` (cri-dockerd).
//!
//! cgroupfs driver (root `kubepods`): `pod<uid>/<id>`, `burstable/pod<uid>/<id>`,
//! `besteffort/pod<uid>/<id>`, the container directory named by its bare id.
//!
//! The pod's own cgroup and every cgroup below it (containers, restarted containers, the
//! sandbox) belong to the pod; the scanner re-reads the tree every tick, so a restarted
//! container's new cgroup is attributed on the next scan.

use super::cgroups::{CgroupLayout, PodRef};

pub struct KubeletLayout;

impl CgroupLayout for KubeletLayout {
    fn pod_of(&self, relative: &[&str]) -> Option<PodRef> {
        // The pod level is the first or second part (after an optional QoS level).
        relative.iter().take(2).find_map(|part| pod_uid(part)).map(PodRef::Uid)
    }
}

/// The pod UID a pod-level cgroup name carries, in its API form (with `-`).
fn pod_uid(part: &str) -> Option<String> {
    if let Some(slice) = part.strip_suffix(".slice") {
        // kubepods-pod<uid>, kubepods-burstable-pod<uid>, kubepods-besteffort-pod<uid>
        let rest = slice.strip_prefix("kubepods-")?;
        let uid = ["pod", "burstable-pod", "besteffort-pod"].iter().find_map(|p| rest.strip_prefix(p))?;
        return valid_uid(uid).then(|| uid.replace('_', "-"));
    }
    let uid = part.strip_prefix("pod")?;
    valid_uid(uid).then(|| uid.to_string())
}

/// UIDs are RFC 4122 UUIDs, except static pods' (a 32-digit hash); systemd writes `-` as `_`.
fn valid_uid(uid: &str) -> bool {
    (1..=64).contains(&uid.len()) && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2f1e6a3c-8b1d-4d2e-9f00-0123456789ab";
    const SYSTEMD_UID: &str = "2f1e6a3c_8b1d_4d2e_9f00_0123456789ab";

    fn uid() -> Option<PodRef> {
        Some(PodRef::Uid(UID.into()))
    }

    #[test]
    fn systemd_driver_every_qos_class_and_runtime() {
        let burstable = format!("kubepods-burstable-pod{SYSTEMD_UID}.slice");
        let besteffort = format!("kubepods-besteffort-pod{SYSTEMD_UID}.slice");
        let guaranteed = format!("kubepods-pod{SYSTEMD_UID}.slice");
        assert_eq!(KubeletLayout.pod_of(&["kubepods-burstable.slice", &burstable]), uid());
        assert_eq!(KubeletLayout.pod_of(&["kubepods-burstable.slice", &burstable, "cri-containerd-abc.scope"]), uid());
        assert_eq!(KubeletLayout.pod_of(&["kubepods-besteffort.slice", &besteffort, "crio-abc.scope"]), uid());
        assert_eq!(KubeletLayout.pod_of(&[&guaranteed, "crio-conmon-abc.scope"]), uid());
        assert_eq!(KubeletLayout.pod_of(&["kubepods-burstable.slice"]), None);
        assert_eq!(KubeletLayout.pod_of(&["system.slice", "containerd.service"]), None);
    }

    #[test]
    fn cgroupfs_driver_every_qos_class() {
        let pod = format!("pod{UID}");
        assert_eq!(KubeletLayout.pod_of(&["burstable", &pod, "0123abcd"]), uid());
        assert_eq!(KubeletLayout.pod_of(&["besteffort", &pod]), uid());
        assert_eq!(KubeletLayout.pod_of(&[&pod, "0123abcd"]), uid());
        assert_eq!(KubeletLayout.pod_of(&["burstable"]), None);
        assert_eq!(KubeletLayout.pod_of(&["podman"]), None);
        // Deeper than the pod level: a pod named like a pod dir inside a container is not one.
        assert_eq!(KubeletLayout.pod_of(&["burstable", "x", &pod]), None);
    }
}
