//! A pod's volumes on the lab's node, as the kubelet lays them out:
//! `<kubelet root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`. Secret, ConfigMap and
//! projected volumes (the service-account token among them) are each a tmpfs of their own
//! in the host's mount namespace, filled the way kubelet's atomic writer does (a dated
//! `..<time>` directory, `..data` pointing at it, and a link per entry through `..data`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mounts;
use super::node::NodeLayout;
use super::podspec::{FileContent, Mount, PodNode, VolumeFile, VolumeKind};
use super::sandbox_spec::BindMount;
use super::{pki, sys, LabError};

/// A volume as made on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeState {
    pub name: String,
    /// `tmpfs`, `dir` or `hostPath`.
    pub kind: String,
    /// Where it is on the host (for a hostPath volume, the host path).
    pub path: PathBuf,
    /// Secret, ConfigMap and projected volumes: mounted read-only, as the kubelet does.
    #[serde(default)]
    pub read_only: bool,
}

/// Who the volumes belong to.
pub struct Owner<'a> {
    pub lab: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub node: &'a PodNode,
}

/// Makes every volume of the pod; what is already mounted (a retried `up`) is kept.
pub fn provision(layout: &NodeLayout, owner: &Owner<'_>) -> Result<Vec<VolumeState>, LabError> {
    let mut made = Vec::new();
    for volume in &owner.node.volumes {
        let state = match &volume.kind {
            VolumeKind::Tmpfs { plugin, files } => {
                let dir = layout.volume_dir(&owner.node.uid, plugin, &volume.name);
                std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
                if !mounts::is_mount_point(&dir)? {
                    sys::mount_tmpfs(&dir, "mode=0755,size=8m").map_err(|e| LabError::io("mounting a tmpfs at", &dir, e))?;
                }
                write_files(&dir, &render(owner, files))?;
                VolumeState {
                    name: volume.name.clone(),
                    kind: "tmpfs".into(),
                    path: dir,
                    read_only: plugin != "kubernetes.io~empty-dir",
                }
            }
            VolumeKind::Dir { plugin } => {
                let dir = layout.volume_dir(&owner.node.uid, plugin, &volume.name);
                std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
                VolumeState { name: volume.name.clone(), kind: "dir".into(), path: dir, read_only: false }
            }
            VolumeKind::HostPath { path, create } => {
                host_path(path, create.as_deref(), &format!("pod {}/{}: volume {}", owner.namespace, owner.pod, volume.name))?;
                VolumeState { name: volume.name.clone(), kind: "hostPath".into(), path: path.clone(), read_only: false }
            }
        };
        made.push(state);
    }
    Ok(made)
}

fn host_path(path: &Path, create: Option<&str>, what: &str) -> Result<(), LabError> {
    if path.exists() {
        return Ok(());
    }
    match create {
        Some("Directory") => std::fs::create_dir_all(path).map_err(|e| LabError::io("creating", path, e)),
        Some(_) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| LabError::io("creating", parent, e))?;
            }
            std::fs::File::create(path).map(drop).map_err(|e| LabError::io("creating", path, e))
        }
        None => Err(LabError::Usage(format!(
            "{what}: hostPath {} does not exist (type DirectoryOrCreate or FileOrCreate creates it)",
            path.display()
        ))),
    }
}

fn render(owner: &Owner<'_>, files: &[VolumeFile]) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|file| {
            let bytes = match &file.content {
                FileContent::Bytes(bytes) => bytes.clone(),
                FileContent::Token { audience } => pki::token(
                    owner.lab,
                    owner.namespace,
                    owner.pod,
                    &owner.node.uid,
                    &owner.node.service_account,
                    audience,
                )
                .into_bytes(),
                FileContent::ClusterCa => pki::cluster_ca(owner.lab).into_bytes(),
            };
            (file.path.clone(), bytes)
        })
        .collect()
}

/// Kubelet's atomic-writer layout: files in `..<time>/`, `..data` → it, and one link per
/// top-level entry through `..data`.
fn write_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), LabError> {
    let stamp = format!("..{}", pki::timestamp(pki::unix_seconds()).replace('-', "_"));
    let data = dir.join(&stamp);
    std::fs::create_dir_all(&data).map_err(|e| LabError::io("creating", &data, e))?;
    let mut top = Vec::new();
    for (path, bytes) in files {
        let file = data.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| LabError::io("creating", parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| LabError::io("writing", &file, e))?;
        if let Some(first) = path.components().next() {
            let first = PathBuf::from(first.as_os_str());
            if !top.contains(&first) {
                top.push(first);
            }
        }
    }
    let link = dir.join("..data");
    replace_symlink(Path::new(&stamp), &link)?;
    for name in top {
        replace_symlink(&Path::new("..data").join(&name), &dir.join(&name))?;
    }
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> Result<(), LabError> {
    match std::fs::remove_file(link) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(LabError::io("removing", link, error)),
        _ => {}
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| LabError::io("creating symlink", link, e))
}

/// The sandbox's bind mounts for the pod's volume mounts.
pub fn bind_mounts(volumes: &[VolumeState], mounts: &[Mount]) -> Vec<BindMount> {
    mounts
        .iter()
        .filter_map(|mount| {
            let volume = volumes.iter().find(|v| v.name == mount.volume)?;
            let source = match &mount.sub_path {
                Some(sub) => volume.path.join(sub),
                None => volume.path.clone(),
            };
            Some(BindMount { source, target: mount.path.clone(), read_only: mount.read_only || volume.read_only })
        })
        .collect()
}

/// Unmounts the pod's volumes and removes its directory under the kubelet's root.
pub fn release(layout: &NodeLayout, uid: &str) -> Result<(), LabError> {
    let dir = layout.pod_dir(uid);
    mounts::detach_below(&dir)?;
    match std::fs::remove_dir_all(&dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(LabError::io("removing", dir, error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_atomic_writer_layout() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![(PathBuf::from("token"), b"t".to_vec()), (PathBuf::from("sub/key"), b"k".to_vec())];
        write_files(dir.path(), &files).unwrap();
        assert_eq!(std::fs::read(dir.path().join("token")).unwrap(), b"t");
        assert_eq!(std::fs::read(dir.path().join("sub/key")).unwrap(), b"k");
        assert_eq!(std::fs::read_link(dir.path().join("token")).unwrap(), Path::new("..data/token"));
        let data = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(data.to_string_lossy().starts_with(".."), "{data:?}");
        // Written again (a retried up): still consistent.
        write_files(dir.path(), &files).unwrap();
        assert_eq!(std::fs::read(dir.path().join("token")).unwrap(), b"t");
    }

    #[test]
    fn bind_mounts_are_read_only_for_kubelet_volumes() {
        let volumes = vec![
            VolumeState { name: "t".into(), kind: "tmpfs".into(), path: "/n/t".into(), read_only: true },
            VolumeState { name: "h".into(), kind: "hostPath".into(), path: "/srv".into(), read_only: false },
        ];
        let mount = |volume: &str, path: &str, sub: Option<&str>| Mount {
            volume: volume.into(),
            path: path.into(),
            sub_path: sub.map(PathBuf::from),
            read_only: false,
        };
        let binds = bind_mounts(&volumes, &[mount("t", "/var/run/x", None), mount("h", "/host", Some("a")), mount("gone", "/g", None)]);
        assert_eq!(binds.len(), 2);
        assert!(binds[0].read_only);
        assert_eq!(binds[1], BindMount { source: "/srv/a".into(), target: "/host".into(), read_only: false });
    }
}
