//! `cgroupLayout: kubelet` on real cgroup v2 directories, laid out as the kubelet lays them
//! out (systemd and cgroupfs drivers; containerd and CRI-O; every QoS class), below a unique
//! test cgroup that is removed even when the test fails.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use moat_agent::config::CgroupLayoutKind;
use moat_agent::node::cgroup_layout as layout;
use moat_agent::node::cgroups::{pods_root, scan, PodRef};
use moat_integration::{cgroup2_mount, require_root, unique_name};

/// A cgroup subtree for one test; removed (deepest first: cgroup directories only go with
/// rmdir) on drop.
struct TestCgroup {
    root: PathBuf,
}

impl TestCgroup {
    fn new() -> TestCgroup {
        require_root();
        let mount = cgroup2_mount().expect("cgroup v2 is mounted");
        let root = mount.join(format!("moat-test-kubelet-{}", unique_name()));
        std::fs::create_dir(&root).unwrap_or_else(|err| panic!("creating {}: {err}", root.display()));
        TestCgroup { root }
    }

    /// Creates `relative` (and its parents); returns its cgroup id.
    fn make(&self, relative: &str) -> u64 {
        let path = self.root.join(relative);
        std::fs::create_dir_all(&path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        std::fs::metadata(&path).expect("stat").ino()
    }

    fn remove(&self, relative: &str) {
        remove_tree(&self.root.join(relative));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.root);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        eprintln!("warning: removing {}: {err}", dir.display());
    }
}

fn uids(root: &Path) -> BTreeMap<u64, String> {
    let found = scan(root, layout(CgroupLayoutKind::Kubelet).as_ref()).expect("scan");
    found
        .into_iter()
        .map(|(id, pod)| match pod {
            PodRef::Uid(uid) => (id, uid),
            other => panic!("the kubelet layout names pods by uid, got {other:?}"),
        })
        .collect()
}

const GUARANTEED: &str = "0c7b6a6e-1111-4a4a-8b8b-000000000001";
const BURSTABLE: &str = "0c7b6a6e-2222-4a4a-8b8b-000000000002";
const BESTEFFORT: &str = "0c7b6a6e-3333-4a4a-8b8b-000000000003";

fn systemd(uid: &str) -> String {
    uid.replace('-', "_")
}

#[test]
fn systemd_driver_containerd_and_crio_every_qos_class() {
    let cgroup = TestCgroup::new();
    let guaranteed = cgroup.make(&format!("kubepods.slice/kubepods-pod{}.slice/cri-containerd-aaa.scope", systemd(GUARANTEED)));
    let burstable_pod = cgroup.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        systemd(BURSTABLE)
    ));
    let burstable = cgroup.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-bbb.scope",
        systemd(BURSTABLE)
    ));
    let besteffort = cgroup.make(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-conmon-ccc.scope",
        systemd(BESTEFFORT)
    ));
    let qos = cgroup.make("kubepods.slice/kubepods-burstable.slice");
    let root = pods_root(None, CgroupLayoutKind::Kubelet, &cgroup.root).expect("detects kubepods.slice");
    assert_eq!(root, cgroup.root.join("kubepods.slice"));

    let found = uids(&root);
    assert_eq!(found.get(&guaranteed).map(String::as_str), Some(GUARANTEED));
    assert_eq!(found.get(&burstable_pod).map(String::as_str), Some(BURSTABLE));
    assert_eq!(found.get(&burstable).map(String::as_str), Some(BURSTABLE));
    assert_eq!(found.get(&besteffort).map(String::as_str), Some(BESTEFFORT));
    assert!(!found.contains_key(&qos), "a QoS slice is no pod");

    // A restarted container gets a new cgroup; the next scan follows it.
    let pod_dir = format!("kubepods.slice/kubepods-pod{}.slice", systemd(GUARANTEED));
    cgroup.remove(&format!("{pod_dir}/cri-containerd-aaa.scope"));
    let restarted = cgroup.make(&format!("{pod_dir}/cri-containerd-ddd.scope"));
    let found = uids(&root);
    assert_eq!(found.get(&restarted).map(String::as_str), Some(GUARANTEED));
    assert!(!found.contains_key(&guaranteed), "the old container's cgroup is gone");
}

#[test]
fn cgroupfs_driver_every_qos_class() {
    let cgroup = TestCgroup::new();
    let guaranteed = cgroup.make(&format!("kubepods/pod{GUARANTEED}/0123456789abcdef"));
    let burstable = cgroup.make(&format!("kubepods/burstable/pod{BURSTABLE}/fedcba9876543210"));
    let besteffort = cgroup.make(&format!("kubepods/besteffort/pod{BESTEFFORT}/00aa11bb22cc"));
    let qos = cgroup.make("kubepods/besteffort");
    let root = pods_root(None, CgroupLayoutKind::Kubelet, &cgroup.root).expect("detects kubepods");
    assert_eq!(root, cgroup.root.join("kubepods"));

    let found = uids(&root);
    assert_eq!(found.get(&guaranteed).map(String::as_str), Some(GUARANTEED));
    assert_eq!(found.get(&burstable).map(String::as_str), Some(BURSTABLE));
    assert_eq!(found.get(&besteffort).map(String::as_str), Some(BESTEFFORT));
    assert!(!found.contains_key(&qos));
    assert_eq!(found.len(), 6, "three pod cgroups and their containers: {found:?}");
}
