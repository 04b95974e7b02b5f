//! The pod's root filesystem, built inside the sandbox's new mount namespace: a tmpfs whose
//! top-level entries are recursive binds of the host's (so commands and paths work as on the
//! host), with the pod's volumes bound at their mount paths, then made `/` by pivot_root.
//!
//! A mount path that does not exist is created inside the pod only: its parent, when it is
//! a host directory, is first shadowed by a tmpfs holding binds of the directory's entries
//! (the host's own filesystem is never written). Everything is private: nothing mounted here
//! reaches the host. Afterwards the pod drops its copies of mounts it must not hold: other
//! labs' pod volumes and network namespaces (so their teardown really frees them).

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::sandbox_spec::SandboxSpec;
use super::{mounts, sys, LabError};

/// Where the old root sits during pivot_root, relative to the new root.
const OLD_ROOT: &str = ".oldroot";
/// Symlinks followed while resolving one mount path.
const MAX_HOPS: usize = 40;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LabError + 'a {
    move |error| LabError::io(action, path, error)
}

/// Builds the root at `spec.root` and pivots into it. Call in a fresh mount namespace.
pub fn build(spec: &SandboxSpec) -> Result<(), LabError> {
    // Nothing below propagates to the host (or from it).
    sys::mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(io("making private", Path::new("/")))?;
    let root = &spec.root;
    sys::mount_tmpfs(root, "mode=0755").map_err(io("mounting the pod's root at", root))?;
    bind_entries(Path::new("/"), root, |name| !spec.host_pid && name == "proc")?;
    // Dropped now, before anything can cover them out of reach of umount.
    for hidden in &spec.hide {
        let inside = root.join(hidden.strip_prefix("/").unwrap_or(hidden));
        mounts::detach_below(&inside)?;
    }
    if !spec.host_pid {
        // PID 1 of the pod's PID namespace mounts a /proc of its own here.
        let proc = root.join("proc");
        std::fs::create_dir(&proc).map_err(io("creating", &proc))?;
    }
    let mut owned: BTreeSet<PathBuf> = [PathBuf::new()].into();
    let mut mounts = spec.mounts.clone();
    // Parents before children, so a volume mounted inside another lands on top of it.
    mounts.sort_by_key(|m| m.target.components().count());
    for mount in &mounts {
        let directory = std::fs::metadata(&mount.source).map_err(io("reading", &mount.source))?.is_dir();
        let target = prepare(root, &mount.target, directory, &mut owned)?;
        sys::bind(&mount.source, &target, mount.read_only).map_err(io("binding", &mount.source))?;
        // Now the volume's own directory: a mount below it shadows it rather than write to it.
        if let Ok(relative) = target.strip_prefix(root) {
            owned.remove(relative);
        }
    }
    pivot(root)?;
    let old = Path::new("/").join(OLD_ROOT);
    sys::detach(&old).map_err(io("unmounting the old root", &old))?;
    std::fs::remove_dir(&old).map_err(io("removing", &old))
}

fn pivot(root: &Path) -> Result<(), LabError> {
    let old = root.join(OLD_ROOT);
    std::fs::create_dir(&old).map_err(io("creating", &old))?;
    sys::pivot_root(root, &old).map_err(io("pivot_root to", root))?;
    std::env::set_current_dir("/").map_err(io("changing to", Path::new("/")))
}

/// Recreates every entry of `from` in `to` (an empty tmpfs directory): directories and
/// files are bound recursively from `source`'s entries, symlinks copied. `skip` names
/// entries to leave out. `from` is read before anything covers it.
fn bind_entries(from: &Path, to: &Path, skip: impl Fn(&str) -> bool) -> Result<(), LabError> {
    // Entries are bound through this fd: `to` may be `from` itself, now covered.
    let dir = File::open(from).map_err(io("opening", from))?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .map_err(io("listing", from))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    entries.sort();
    for name in entries {
        if name.to_str().is_some_and(&skip) {
            continue;
        }
        let (src, dst) = (source.join(&name), to.join(&name));
        let kind = std::fs::symlink_metadata(&src).map_err(io("reading", &src))?.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&src).map_err(io("reading", &src))?;
            std::os::unix::fs::symlink(link, &dst).map_err(io("creating", &dst))?;
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(io("creating", &dst))?;
        } else {
            File::create(&dst).map_err(io("creating", &dst))?;
        }
        if let Err(error) = sys::bind(&src, &dst, false) {
            return Err(LabError::io("binding", from.join(&name), error));
        }
    }
    Ok(())
}

/// Shadows the host directory `dir` (inside the root) with a tmpfs holding binds of its
/// entries, so new entries can be made in it.
fn shadow(dir: &Path) -> Result<(), LabError> {
    let metadata = std::fs::metadata(dir).map_err(io("reading", dir))?;
    // Opened before the tmpfs covers it: its entries are bound through this fd.
    let original = File::open(dir).map_err(io("opening", dir))?;
    let options = format!("mode={:o},uid={},gid={}", metadata.mode() & 0o7777, metadata.uid(), metadata.gid());
    sys::mount_tmpfs(dir, &options).map_err(io("shadowing", dir))?;
    let through = PathBuf::from(format!("/proc/self/fd/{}", original.as_raw_fd()));
    bind_entries(&through, dir, |_| false)
}

/// Resolves `target` (absolute, as the pod sees it) inside `root`, following symlinks as
/// the pod would, and creates what is missing (a directory, or a file when the source is
/// not one). Returns the mount point as seen from here.
fn prepare(root: &Path, target: &Path, directory: bool, owned: &mut BTreeSet<PathBuf>) -> Result<PathBuf, LabError> {
    let bad = |message: String| LabError::Internal(format!("volume mount {}: {message}", target.display()));
    let mut pending: VecDeque<OsString> = normal_parts(target);
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let last = pending.is_empty();
        let here = root.join(&resolved).join(&part);
        match std::fs::symlink_metadata(&here) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(bad("too many symlinks".into()));
                }
                let link = std::fs::read_link(&here).map_err(io("reading", &here))?;
                if link.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut expanded = normal_parts(&link);
                expanded.extend(pending);
                pending = expanded;
            }
            Ok(metadata) if metadata.is_dir() || (last && !directory) => resolved.push(&part),
            Ok(_) => return Err(bad(format!("{} is not a directory", resolved.join(&part).display()))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if !owned.contains(&resolved) {
                    shadow(&root.join(&resolved))?;
                    owned.insert(resolved.clone());
                }
                if last && !directory {
                    File::create(&here).map_err(io("creating", &here))?;
                } else {
                    std::fs::create_dir(&here).map_err(io("creating", &here))?;
                    owned.insert(resolved.join(&part));
                }
                resolved.push(&part);
            }
            Err(error) => return Err(LabError::io("reading", here, error)),
        }
    }
    Ok(root.join(resolved))
}

/// The names and `..` of a path, without the root and `.`.
fn normal_parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}
