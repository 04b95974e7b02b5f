//! Which cgroup belongs to which pod. A layout names pod cgroups below the pods' root; the
//! scanner walks that tree and reports every cgroup id with the pod it belongs to, if any.
//! A cgroup that maps to no known pod gets no entry, and the datapath treats it as pending.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use super::dir_watch::DirWatch;
use crate::config::CgroupLayoutKind;
use crate::model::PodKey;

/// How a layout identifies a pod: the lab by namespace and name, the kubelet by UID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodRef {
    Key(PodKey),
    Uid(String),
}

/// Names pod cgroups. `relative` is the cgroup's path below the pods' root, split in parts.
pub trait CgroupLayout: Send + Sync {
    fn pod_of(&self, relative: &[&str]) -> Option<PodRef>;
}

/// `moat lab`'s layout: `<root>/<namespace>_<pod>[/<container>...]`. Namespaces are DNS
/// labels and pod names DNS subdomains, neither may contain '_', so the split is exact.
pub struct LabLayout;

impl CgroupLayout for LabLayout {
    fn pod_of(&self, relative: &[&str]) -> Option<PodRef> {
        let (namespace, name) = relative.first()?.split_once('_')?;
        (!namespace.is_empty() && !name.is_empty()).then(|| PodRef::Key(PodKey::new(namespace, name)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("pods' cgroup root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("cgroupRoot is unset and neither {systemd} (kubelet's systemd cgroup driver) nor {cgroupfs} (cgroupfs driver) exists; set cgroupRoot")]
    NoKubepods { systemd: PathBuf, cgroupfs: PathBuf },
}

/// cgroup id → pod, for every cgroup below the root that the layout attributes to a pod.
pub type PodCgroups = BTreeMap<u64, PodRef>;

/// Deep enough for kubelet layouts (qos/pod/container) with room to spare.
const MAX_DEPTH: usize = 6;

/// Walks `root`. Directories that vanish mid-walk (a container exiting) are skipped.
pub fn scan(root: &Path, layout: &dyn CgroupLayout) -> Result<PodCgroups, CgroupError> {
    scan_listing(root, layout, |_| {})
}

/// [`scan`], watching every directory it lists for the next change.
pub fn scan_watched(root: &Path, layout: &dyn CgroupLayout, watch: &mut DirWatch) -> Result<PodCgroups, CgroupError> {
    watch.scanning();
    let scanned = scan_listing(root, layout, |dir| watch.watch(dir));
    if scanned.is_err() {
        watch.mark_due();
    }
    scanned
}

fn scan_listing(root: &Path, layout: &dyn CgroupLayout, before_listing: impl FnMut(&Path)) -> Result<PodCgroups, CgroupError> {
    let mut found = PodCgroups::new();
    walk(root, before_listing, |_, parts, id| {
        let borrowed: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let Some(pod) = layout.pod_of(&borrowed) {
            found.insert(id, pod);
        }
    })?;
    Ok(found)
}

/// The directories of the cgroups `ids` below `root` (those still there).
pub fn paths(root: &Path, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, PathBuf>, CgroupError> {
    let mut found = BTreeMap::new();
    walk(root, |_| {}, |path, _, id| {
        if ids.contains(&id) {
            found.insert(id, path.to_path_buf());
        }
    })?;
    Ok(found)
}

/// Calls `visit(path, parts below root, cgroup id)` for every directory below `root`, up to
/// `MAX_DEPTH` deep, and `before_listing(dir)` before each directory is listed.
fn walk(root: &Path, mut before_listing: impl FnMut(&Path), mut visit: impl FnMut(&Path, &[String], u64)) -> Result<(), CgroupError> {
    std::fs::metadata(root).map_err(|source| CgroupError::Root { path: root.into(), source })?;
    let mut stack = vec![(root.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, parts)) = stack.pop() {
        before_listing(&dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            // The entry's type comes with the directory listing; a cgroup's dozens of control
            // files cost no stat each (that stat was most of an apply's time at 10k pods).
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let mut child_parts = parts.clone();
            child_parts.push(entry.file_name().to_string_lossy().into_owned());
            let path = entry.path();
            // On cgroup v2 a directory's inode number is the cgroup id the kernel reports,
            // and kernfs lists it with the entry: no stat per cgroup.
            visit(&path, &child_parts, entry.ino());
            if child_parts.len() < MAX_DEPTH {
                stack.push((path, child_parts));
            }
        }
    }
    Ok(())
}

/// Root of the kubelet's pods with the systemd cgroup driver, below the cgroup v2 mount.
pub const KUBEPODS_SYSTEMD: &str = "kubepods.slice";
/// Root of the kubelet's pods with the cgroupfs cgroup driver.
pub const KUBEPODS_CGROUPFS: &str = "kubepods";

/// The pods' root: `configured` (see [`resolve_root`]); unset, whichever of `kubepods.slice`
/// and `kubepods` exists below the cgroup v2 mount (`kubepods.slice` when neither does and the
/// layout is the lab's, where the lab always sets it).
pub fn pods_root(configured: Option<&Path>, kind: CgroupLayoutKind, cgroup2_mount: &Path) -> Result<PathBuf, CgroupError> {
    if let Some(configured) = configured {
        return Ok(resolve_root(configured, cgroup2_mount));
    }
    let systemd = cgroup2_mount.join(KUBEPODS_SYSTEMD);
    let cgroupfs = cgroup2_mount.join(KUBEPODS_CGROUPFS);
    match kind {
        CgroupLayoutKind::Lab => Ok(systemd),
        CgroupLayoutKind::Kubelet if systemd.is_dir() => Ok(systemd),
        CgroupLayoutKind::Kubelet if cgroupfs.is_dir() => Ok(cgroupfs),
        CgroupLayoutKind::Kubelet => Err(CgroupError::NoKubepods { systemd, cgroupfs }),
    }
}

/// The pods' root as configured: absolute, or relative to the cgroup v2 mount.
pub fn resolve_root(configured: &Path, cgroup2_mount: &Path) -> PathBuf {
    if configured.is_absolute() {
        configured.to_path_buf()
    } else {
        cgroup2_mount.join(configured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_layout_attributes_pod_and_container_dirs() {
        let pod = Some(PodRef::Key(PodKey::new("x", "a.b")));
        assert_eq!(LabLayout.pod_of(&["x_a.b"]), pod);
        assert_eq!(LabLayout.pod_of(&["x_a.b", "c1"]), pod);
        assert_eq!(LabLayout.pod_of(&["stray"]), None);
        assert_eq!(LabLayout.pod_of(&["_a"]), None);
    }

    #[test]
    fn pods_root_detects_the_kubelet_driver() {
        let mount = tempfile::tempdir().unwrap();
        let kubelet = CgroupLayoutKind::Kubelet;
        assert!(pods_root(None, kubelet, mount.path()).is_err());
        std::fs::create_dir(mount.path().join("kubepods")).unwrap();
        assert_eq!(pods_root(None, kubelet, mount.path()).unwrap(), mount.path().join("kubepods"));
        std::fs::create_dir(mount.path().join("kubepods.slice")).unwrap();
        assert_eq!(pods_root(None, kubelet, mount.path()).unwrap(), mount.path().join("kubepods.slice"));
        let set = pods_root(Some(Path::new("x")), kubelet, mount.path()).unwrap();
        assert_eq!(set, mount.path().join("x"));
    }

    #[test]
    fn a_watched_scan_is_due_again_only_after_a_cgroup_comes_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x_a/c1")).unwrap();
        let mut watch = crate::node::cgroup_watch();
        assert!(watch.due());
        assert_eq!(scan_watched(dir.path(), &LabLayout, &mut watch).unwrap().len(), 2);
        assert!(!watch.due());
        std::fs::create_dir(dir.path().join("x_a/c2")).unwrap();
        assert!(watch.due(), "a container's cgroup inside a pod's");
        assert_eq!(scan_watched(dir.path(), &LabLayout, &mut watch).unwrap().len(), 3);
        assert!(!watch.due());
        std::fs::remove_dir_all(dir.path().join("x_a")).unwrap();
        assert!(watch.due(), "a pod's cgroup gone");
        assert!(scan_watched(dir.path(), &LabLayout, &mut watch).unwrap().is_empty());
        assert!(scan_watched(&dir.path().join("missing"), &LabLayout, &mut watch).is_err());
        assert!(watch.due(), "a failed scan is retried at once");
    }

    #[test]
    fn scan_maps_inodes_and_skips_strays() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x_a/c1")).unwrap();
        std::fs::create_dir_all(dir.path().join("stray")).unwrap();
        let found = scan(dir.path(), &LabLayout).unwrap();
        assert_eq!(found.len(), 2);
        let ino = std::fs::metadata(dir.path().join("x_a/c1")).unwrap().ino();
        assert_eq!(found[&ino], PodRef::Key(PodKey::new("x", "a")));
        assert!(scan(&dir.path().join("missing"), &LabLayout).is_err());
        let wanted = BTreeSet::from([ino, 1]);
        assert_eq!(paths(dir.path(), &wanted).unwrap(), BTreeMap::from([(ino, dir.path().join("x_a/c1"))]));
    }
}
