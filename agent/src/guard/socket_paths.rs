//! Every name under which a pod's processes reach a runtime socket (containerd.sock, ...):
//! cgroup/connect_unix compares the literal `sun_path`, so for each pod we list the absolute
//! paths, in each of its mount namespaces, that lead to one of the sockets.
//!
//! A socket lies at one path of its filesystem; every mount of that filesystem whose root
//! is above that path exposes it at `mount point + the rest`. Each such candidate is checked
//! by stat through the namespace's root, so over-mounted or shadowed paths drop out.
//!
//! A namespace's mount table is read once (again only when the sockets change): a mount made
//! later inside a known namespace is not seen. Names through a symlink are not listed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use moat_common::guard::{kernel_dev, FileKey, SocketPath, SOCKET_PATH_LEN};

use super::node::file_key;

const PROC: &str = "/proc";

/// A runtime socket: its path as the agent sees it, and its identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuntimeSocket {
    pub path: PathBuf,
    pub file: FileKey,
}

/// A pod: its tag (`Actor::pod`) and its cgroup v2 directories (their descendants included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProcesses {
    pub tag: u64,
    pub cgroups: Vec<PathBuf>,
}

/// A mountinfo line: which directory of which filesystem is mounted where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Kernel encoding (`kernel_dev`).
    pub dev: u64,
    pub root: PathBuf,
    pub point: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketPathsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// A socket and its path inside its filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Located {
    file: FileKey,
    relative: PathBuf,
}

/// The paths to runtime sockets, cached per mount namespace.
#[derive(Debug, Default)]
pub struct SocketPaths {
    /// The sockets (sorted) the cache holds paths to; `None` until they were located.
    sockets: Option<Vec<RuntimeSocket>>,
    located: Vec<Located>,
    /// Mount namespace inode → the paths in it and the socket each leads to.
    namespaces: HashMap<u64, Vec<(PathBuf, FileKey)>>,
    scans: u64,
}

impl SocketPaths {
    /// Every (pod, path) and the socket it leads to. Reads the mount table only of namespaces
    /// not seen at the last call, or of all when `sockets` changed.
    pub fn compute(&mut self, sockets: &[RuntimeSocket], pods: &[PodProcesses]) -> BTreeMap<SocketPath, FileKey> {
        self.update_sockets(sockets);
        if self.located.is_empty() {
            self.namespaces.clear();
            return BTreeMap::new();
        }
        let seen = namespaces_of(pods);
        self.namespaces.retain(|ns, _| seen.pids.contains_key(ns));
        for (ns, pids) in &seen.pids {
            if !self.namespaces.contains_key(ns) {
                self.scans += 1;
                // Unreadable (every pid exited): not cached, tried again at the next call.
                if let Some(paths) = scan_namespace(*ns, pids, &self.located) {
                    self.namespaces.insert(*ns, paths);
                }
            }
        }
        self.paths_of(&seen.pods)
    }

    /// Namespaces whose mount table was read (or tried) so far.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Re-locates the sockets, and forgets every namespace's paths, when the set changed.
    fn update_sockets(&mut self, sockets: &[RuntimeSocket]) {
        let mut sorted = sockets.to_vec();
        sorted.sort();
        sorted.dedup();
        if self.sockets.as_ref() == Some(&sorted) {
            return;
        }
        self.namespaces.clear();
        match locate(&sorted) {
            Ok(located) => {
                self.located = located;
                self.sockets = Some(sorted);
            }
            Err(error) => {
                // Left unrecorded, so the next call tries again.
                tracing::warn!(%error, "runtime sockets not located: no pod's path to them is refused by name");
                self.located.clear();
                self.sockets = None;
            }
        }
    }

    fn paths_of(&self, pods: &[(u64, BTreeSet<u64>)]) -> BTreeMap<SocketPath, FileKey> {
        let mut out = BTreeMap::new();
        for (tag, namespaces) in pods {
            for (path, file) in namespaces.iter().filter_map(|ns| self.namespaces.get(ns)).flatten() {
                if let Some(key) = SocketPath::new(*tag, path.as_os_str().as_bytes()) {
                    out.insert(key, *file);
                }
            }
        }
        out
    }
}

/// Each pod's mount namespaces, and the pids in each namespace.
#[derive(Debug, Default)]
struct Seen {
    pods: Vec<(u64, BTreeSet<u64>)>,
    pids: BTreeMap<u64, Vec<u32>>,
}

fn namespaces_of(pods: &[PodProcesses]) -> Seen {
    let mut seen = Seen::default();
    for pod in pods {
        let mut namespaces = BTreeSet::new();
        for pid in cgroup_pids(&pod.cgroups) {
            // Exited since cgroup.procs was read: skipped.
            let Some(ns) = mount_namespace(pid) else { continue };
            namespaces.insert(ns);
            seen.pids.entry(ns).or_default().push(pid);
        }
        seen.pods.push((pod.tag, namespaces));
    }
    seen
}

/// The pids in `cgroups` and in every cgroup below them (a pod has one per container).
fn cgroup_pids(cgroups: &[PathBuf]) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let mut dirs = cgroups.to_vec();
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(parse_pids(&text));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let children = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        dirs.extend(children.map(|e| e.path()));
    }
    pids
}

/// cgroup.procs: one pid a line; 0 for a process outside our pid namespace.
fn parse_pids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().filter_map(|line| line.trim().parse().ok()).filter(|pid| *pid != 0)
}

fn mount_namespace(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("{PROC}/{pid}/ns/mnt")).ok().map(|meta| meta.ino())
}

/// The verified paths of namespace `ns`, through the first of its `pids` that answers.
fn scan_namespace(ns: u64, pids: &[u32], sockets: &[Located]) -> Option<Vec<(PathBuf, FileKey)>> {
    pids.iter().find_map(|pid| scan_through(ns, *pid, sockets))
}

fn scan_through(ns: u64, pid: u32, sockets: &[Located]) -> Option<Vec<(PathBuf, FileKey)>> {
    let proc = PathBuf::from(format!("{PROC}/{pid}"));
    if mount_namespace(pid)? != ns {
        return None;
    }
    let mounts = parse_mountinfo(&std::fs::read(proc.join("mountinfo")).ok()?);
    let root = proc.join("root");
    let mut found = Vec::new();
    for socket in sockets {
        for candidate in candidates(&mounts, socket.file.dev, &socket.relative) {
            if file_key(&below(&root, &candidate)).is_ok_and(|key| key == socket.file) {
                found.push((candidate, socket.file));
            }
        }
    }
    // The pid may have exited, and its number been reused, while we read.
    (mount_namespace(pid)? == ns).then_some(found)
}

/// Where each socket lies in its filesystem, from the agent's own mount table. Sockets not
/// found there are logged and left out.
fn locate(sockets: &[RuntimeSocket]) -> Result<Vec<Located>, SocketPathsError> {
    let path = PathBuf::from(format!("{PROC}/self/mountinfo"));
    let text = std::fs::read(&path).map_err(|source| SocketPathsError::Read { path, source })?;
    let mounts = parse_mountinfo(&text);
    let mut located = Vec::new();
    for socket in sockets {
        // Mount points never go through a symlink; the configured path may (/var/run → /run).
        let path = std::fs::canonicalize(&socket.path).unwrap_or_else(|_| socket.path.clone());
        match fs_relative(&mounts, socket.file.dev, &path) {
            Some(relative) => located.push(Located { file: socket.file, relative }),
            None => tracing::warn!(
                socket = %socket.path.display(),
                "runtime socket not on any mount of its device: pods' paths to it are not refused by name"
            ),
        }
    }
    Ok(located)
}

/// `path` (on device `dev`, as `mounts` show it) inside its filesystem: the root of the
/// deepest mount of `dev` above it, joined with the rest. The last of equal mounts is the
/// one on top.
pub fn fs_relative(mounts: &[Mount], dev: u64, path: &Path) -> Option<PathBuf> {
    let mount = mounts
        .iter()
        .filter(|m| m.dev == dev && path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())?;
    let rest = path.strip_prefix(&mount.point).ok()?;
    Some(join(&mount.root, rest))
}

/// The paths at which `mounts` expose `relative` (a path inside filesystem `dev`), those that
/// fit `sun_path` only.
pub fn candidates(mounts: &[Mount], dev: u64, relative: &Path) -> BTreeSet<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.dev == dev)
        .filter_map(|m| Some(join(&m.point, relative.strip_prefix(&m.root).ok()?)))
        .filter(|path| path.as_os_str().len() < SOCKET_PATH_LEN)
        .collect()
}

/// `base/rest`, without the trailing `/` joining an empty `rest` adds.
fn join(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// Absolute `path` resolved below `root` (joining an absolute path would replace `root`).
fn below(root: &Path, path: &Path) -> PathBuf {
    join(root, path.strip_prefix("/").unwrap_or(path))
}

/// Lines of `/proc/PID/mountinfo`; malformed ones are skipped. Bytes, not text: a mount
/// point need not be UTF-8, and a lossy copy would not be the name connect() uses.
pub fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    text.split(|b| *b == b'\n').filter_map(parse_mount).collect()
}

/// `id parent major:minor root mount_point options [optional...] - fstype source superopts`
fn parse_mount(line: &[u8]) -> Option<Mount> {
    let mut fields = line.split(|b| *b == b' ');
    let (_id, _parent, dev, root, point, _options) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    fields.find(|field| *field == b"-")?;
    fields.next().filter(|fstype| !fstype.is_empty())?;
    let point = path_of(unescape(point));
    if !point.is_absolute() {
        return None;
    }
    Some(Mount { dev: parse_dev(dev)?, root: path_of(unescape(root)), point })
}

fn parse_dev(field: &[u8]) -> Option<u64> {
    let (major, minor) = std::str::from_utf8(field).ok()?.split_once(':')?;
    Some(kernel_dev(major.parse().ok()?, minor.parse().ok()?))
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; anything else is literal.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((byte, tail)) = rest.split_first() {
        match (*byte, octal(tail)) {
            (b'\\', Some((value, after))) => {
                out.push(value);
                rest = after;
            }
            _ => {
                out.push(*byte);
                rest = tail;
            }
        }
    }
    out
}

/// Three octal digits at the start of `bytes` (at most `\377`), and what follows.
fn octal(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (digits, after) = bytes.split_at_checked(3)?;
    let digit = |d: &u8| (b'0'..=b'7').contains(d).then(|| u16::from(d - b'0'));
    let value = digits.iter().try_fold(0u16, |acc, d| Some(acc * 8 + digit(d)?))?;
    Some((u8::try_from(value).ok()?, after))
}

#[cfg(test)]
#[path = "socket_paths_tests.rs"]
mod tests;
