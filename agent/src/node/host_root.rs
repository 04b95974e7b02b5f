//! The node's filesystem as the agent reaches it: at `/` when the agent runs on the host, at
//! the directory the node's `/` is mounted on (`/host`) when it runs in the DaemonSet's
//! container. Node paths — configured ones, and those the node's own files name (symlink
//! targets, kubeconfig entries) — are resolved below that root, absolute symlinks included,
//! so `/var/run → /run` and the kubelet's `kubelet-client-current.pem →
//! /var/lib/kubelet/pki/…` lead where they lead on the node, never into the container.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the agent reaches the existing file `node_path` names on the node, every
    /// symlink on the way resolved inside the root (`..` stops at it).
    pub fn resolve(&self, node_path: &Path) -> io::Result<PathBuf> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = VecDeque::new();
        push_front(&mut pending, &mut resolved, node_path);
        let mut followed = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                resolved.pop();
                continue;
            }
            let here = self.below(&resolved).join(&name);
            if std::fs::symlink_metadata(&here)?.file_type().is_symlink() {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                push_front(&mut pending, &mut resolved, &std::fs::read_link(&here)?);
            } else {
                resolved.push(name);
            }
        }
        Ok(self.below(&resolved))
    }

    /// The node's path of `seen`, a path the agent reaches below the root.
    pub fn node_path(&self, seen: &Path) -> PathBuf {
        match seen.strip_prefix(&self.root) {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => seen.to_path_buf(),
        }
    }

    /// The nearest directory at or above the node's `dir` that exists, as the agent reaches it.
    pub fn existing_dir(&self, dir: &Path) -> Option<PathBuf> {
        dir.ancestors().find_map(|d| self.resolve(d).ok().filter(|seen| seen.is_dir()))
    }

    fn below(&self, components: &[OsString]) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(components);
        path
    }
}

/// Puts `path`'s names before what is pending; an absolute `path` starts again at the root.
fn push_front(pending: &mut VecDeque<OsString>, resolved: &mut Vec<OsString>, path: &Path) {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                resolved.clear();
                names.clear();
            }
            Component::CurDir => {}
            Component::ParentDir => names.push(OsString::from("..")),
            Component::Normal(name) => names.push(name.to_os_string()),
        }
    }
    for name in names.into_iter().rev() {
        pending.push_front(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A node tree below a temporary root: kubelet PKI with an absolute rotation link,
    /// `/var/run → /run` (absolute), a relative link, and a link that tries to climb out.
    fn node() -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        let pki = root.join("var/lib/kubelet/pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::create_dir_all(root.join("run/containerd")).unwrap();
        std::fs::write(pki.join("kubelet-client-2026.pem"), "cert").unwrap();
        symlink("/var/lib/kubelet/pki/kubelet-client-2026.pem", pki.join("kubelet-client-current.pem")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../var/lib/kubelet/pki", root.join("run/pki")).unwrap();
        symlink("../../../../..", root.join("run/up")).unwrap();
        std::fs::write(root.join("run/containerd/containerd.sock"), "").unwrap();
        // What an unconfined resolution would find instead: the container's own files.
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        (dir, HostRoot::new(&root))
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let (dir, host) = node();
        let root = dir.path().join("host");
        let current = host.resolve(Path::new("/var/lib/kubelet/pki/kubelet-client-current.pem")).unwrap();
        assert_eq!(current, root.join("var/lib/kubelet/pki/kubelet-client-2026.pem"));
        assert_eq!(host.node_path(&current), Path::new("/var/lib/kubelet/pki/kubelet-client-2026.pem"));
        let socket = host.resolve(Path::new("/var/run/containerd/containerd.sock")).unwrap();
        assert_eq!(socket, root.join("run/containerd/containerd.sock"));
    }

    #[test]
    fn relative_symlinks_and_dot_dot_never_leave_the_root() {
        let (dir, host) = node();
        let root = dir.path().join("host");
        // Through `/var/run → /run`, then `../var/lib/kubelet/pki` taken from /run.
        assert_eq!(host.resolve(Path::new("/var/run/pki")).unwrap(), root.join("var/lib/kubelet/pki"));
        assert_eq!(host.resolve(Path::new("/run/up/var/lib/kubelet")).unwrap(), root.join("var/lib/kubelet"));
        assert_eq!(host.resolve(Path::new("/../../var/./lib")).unwrap(), root.join("var/lib"));
        assert_eq!(host.node_path(&root), Path::new("/"));
    }

    #[test]
    fn missing_files_and_loops_are_errors() {
        let (dir, host) = node();
        let root = dir.path().join("host");
        let error = host.resolve(Path::new("/etc/kubernetes/kubelet.conf")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        symlink("/loop", root.join("loop")).unwrap();
        assert_eq!(host.resolve(Path::new("/loop")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        // The nearest existing directory of one not made yet.
        assert_eq!(host.existing_dir(Path::new("/etc/kubernetes/pki")), Some(root.clone()));
        assert_eq!(host.existing_dir(Path::new("/var/run/containerd/x")), Some(root.join("run/containerd")));
    }

    #[test]
    fn the_hosts_own_root_is_plain_resolution() {
        let (dir, _) = node();
        let host = HostRoot::new(Path::new("/"));
        let link = dir.path().join("host/var/lib/kubelet/pki/kubelet-client-current.pem");
        // Absolute targets are node paths, and here the node is the host.
        let kind = |r: io::Result<PathBuf>| r.map_err(|e| e.kind());
        assert_eq!(kind(host.resolve(&link)), kind(std::fs::canonicalize(&link)));
        let plain = dir.path().join("host/run/containerd/containerd.sock");
        assert_eq!(host.resolve(&plain).unwrap(), std::fs::canonicalize(&plain).unwrap());
        assert_eq!(host.node_path(&plain), plain);
    }
}
