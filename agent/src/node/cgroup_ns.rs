//! Cgroup paths as `/proc/<pid>/cgroup` shows them: relative to the reader's cgroup
//! namespace. An agent in a container with a cgroup namespace of its own (containerd's
//! default for a non-privileged container on cgroup v2) reads `0::/` for itself and
//! `0::/../../kubepods.slice/…` for a pod, while the cgroup v2 mount it is given (the node's
//! `/sys/fs/cgroup`) holds the whole tree. The namespace's root in that tree is found once: the
//! directory listing the agent's own pid, less the path the agent reads for itself.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// Cgroup directories searched for the agent's own pid before giving up (a node has
/// hundreds to a few thousand).
const MAX_SEARCHED: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupNamespace {
    /// The namespace's root below the cgroup v2 mount (empty: the mount's root).
    root: PathBuf,
}

impl CgroupNamespace {
    /// The host's, or one whose root is `root` below the mount.
    pub fn at(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    /// This process's, found below `mount` (the cgroup v2 mount); the mount's root where it
    /// cannot be found (then paths of cgroups outside the namespace do not resolve).
    pub fn of_this_process(mount: &Path) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|text| unified_path(&text));
        let Some(own) = own else { return Self::at(Path::new("")) };
        match find_root(mount, std::process::id(), &own) {
            Some(root) => {
                if !root.as_os_str().is_empty() {
                    tracing::info!(root = %root.display(), "the agent has a cgroup namespace of its own; cgroup paths in /proc are read below it");
                }
                Self { root }
            }
            None => {
                tracing::warn!(own, "the agent's cgroup was not found below {}; cgroup paths outside its namespace do not resolve", mount.display());
                Self::at(Path::new(""))
            }
        }
    }

    /// The directory below `mount` of `path` as `/proc` shows it to this namespace.
    pub fn dir(&self, mount: &Path, path: &str) -> PathBuf {
        let joined = self.root.join(path.trim_start_matches('/'));
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for component in joined.components() {
            match component {
                Component::Normal(name) => parts.push(name),
                // Not above the mount's root: the tree holds nothing there.
                Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        let mut dir = mount.to_path_buf();
        dir.extend(parts);
        dir
    }
}

/// This process's namespace over the cgroup v2 mount, found on first use.
pub fn current(mount: &Path) -> &'static CgroupNamespace {
    static CURRENT: OnceLock<CgroupNamespace> = OnceLock::new();
    CURRENT.get_or_init(|| CgroupNamespace::of_this_process(mount))
}

/// The `0::` line's path of a `/proc/<pid>/cgroup`.
pub fn unified_path(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_string)
}

/// The namespace root below `mount` for process `pid`, which reads its own cgroup as `own`:
/// `mount/own` itself when it lists `pid` (the host's namespace), else the directory that
/// lists it, with `own`'s components taken off its end.
fn find_root(mount: &Path, pid: u32, own: &str) -> Option<PathBuf> {
    let own = Path::new(own.trim_start_matches('/'));
    let lists = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|text| text.lines().any(|l| l.trim().parse() == Ok(pid)))
    };
    if !own.components().any(|c| c == Component::ParentDir) && lists(&mount.join(own)) {
        return Some(PathBuf::new());
    }
    let found = search(mount, &lists)?;
    let relative = found.strip_prefix(mount).ok()?;
    let depth = own.components().count();
    let kept = relative.components().count().checked_sub(depth)?;
    relative.ends_with(own).then(|| relative.components().take(kept).collect())
}

/// The first directory below `mount` (breadth first) for which `lists` holds.
fn search(mount: &Path, lists: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([mount.to_path_buf()]);
    let mut searched = 0;
    while let Some(dir) = queue.pop_front() {
        searched += 1;
        if searched > MAX_SEARCHED {
            return None;
        }
        if lists(&dir) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_namespace_resolve_below_its_root() {
        let mount = Path::new("/sys/fs/cgroup");
        let ns = CgroupNamespace::at(Path::new("kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope"));
        assert_eq!(ns.dir(mount, "/"), mount.join("kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope"));
        assert_eq!(ns.dir(mount, "/../../kubepods-pod2.slice/cri-containerd-b.scope"), mount.join("kubepods.slice/kubepods-pod2.slice/cri-containerd-b.scope"));
        assert_eq!(ns.dir(mount, "/../../../../../init.scope"), mount.join("init.scope"));
        let host = CgroupNamespace::at(Path::new(""));
        assert_eq!(host.dir(mount, "/system.slice/kubelet.service"), mount.join("system.slice/kubelet.service"));
        assert_eq!(unified_path("12:pids:/x\n0::/a/b\n").as_deref(), Some("/a/b"));
    }

    /// For real: a process in a cgroup of its own unshares its cgroup namespace and reads its
    /// own cgroup (`/`) and this process's (outside its namespace, so with `..`); resolved
    /// below the namespace's root, that is this process's cgroup.
    #[test]
    fn a_path_read_in_a_private_namespace_resolves_to_the_cgroup() {
        let Ok(mount) = crate::node::mounts::cgroup2() else { return };
        let ours = unified_path(&std::fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
        let parent = mount.join(ours.trim_start_matches('/'));
        let cgroup = parent.join(format!("moat-cgns-{}", std::process::id()));
        if std::fs::create_dir(&cgroup).is_err() {
            eprintln!("skipped: cannot make a cgroup below {}", parent.display());
            return;
        }
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec unshare --cgroup sh -c 'cat /proc/self/cgroup /proc/{}/cgroup'",
            cgroup.display(),
            std::process::id()
        );
        let output = std::process::Command::new("sh").args(["-c", &script]).output();
        let removed = std::fs::remove_dir(&cgroup);
        let text = output.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        removed.unwrap_or_else(|e| panic!("removing {}: {e}; {output:?}", cgroup.display()));
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("0::")).collect();
        assert_eq!(lines.first().copied(), Some("0::/"), "{output:?}");
        let seen = lines.get(1).and_then(|l| unified_path(l)).unwrap_or_default();
        assert!(seen.starts_with("/.."), "this process is outside the child's namespace: {seen}");
        let ns = CgroupNamespace::at(cgroup.strip_prefix(&mount).unwrap());
        assert_eq!(ns.dir(&mount, &seen), parent);
    }

    #[test]
    fn the_root_is_the_directory_listing_the_pid_less_the_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let scope = dir.path().join("kubepods.slice/pod1/cri-containerd-a.scope");
        std::fs::create_dir_all(scope.join("sub")).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "1\n").unwrap();
        std::fs::write(scope.join("cgroup.procs"), "").unwrap();
        std::fs::write(scope.join("sub/cgroup.procs"), "7\n42\n").unwrap();
        assert_eq!(find_root(dir.path(), 42, "/sub"), Some(PathBuf::from("kubepods.slice/pod1/cri-containerd-a.scope")));
        assert_eq!(find_root(dir.path(), 42, "/"), Some(PathBuf::from("kubepods.slice/pod1/cri-containerd-a.scope/sub")));
        assert_eq!(find_root(dir.path(), 1, "/"), Some(PathBuf::new()));
        assert_eq!(find_root(dir.path(), 9, "/"), None);
        assert_eq!(find_root(dir.path(), 42, "/other"), None);
    }
}
