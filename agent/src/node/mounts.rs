//! Finds filesystems in /proc/self/mountinfo.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no cgroup v2 filesystem is mounted (looked in {path}); mount one or set cgroupRoot to an absolute path below one")]
    NoCgroup2 { path: PathBuf },
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points of every filesystem of type `fstype`, in mount order.
pub fn mount_points(fstype: &str) -> Result<Vec<PathBuf>, MountError> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|source| MountError::Read { path: MOUNTINFO.into(), source })?;
    Ok(parse_mount_points(&text, fstype))
}

/// The cgroup v2 mount: /sys/fs/cgroup on most nodes, /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2() -> Result<PathBuf, MountError> {
    mount_points("cgroup2")?
        .into_iter()
        .next()
        .ok_or_else(|| MountError::NoCgroup2 { path: MOUNTINFO.into() })
}

/// Whether `path` is itself a mount point of `fstype`.
pub fn is_mounted(path: &Path, fstype: &str) -> Result<bool, MountError> {
    Ok(mount_points(fstype)?.iter().any(|point| point == path))
}

/// Mount points at or below `prefix` (component-wise), in mount order. `mountinfo` names
/// the mountinfo file to read (another process's, or another root's `/proc`).
pub fn mount_points_below(mountinfo: &Path, prefix: &Path) -> Result<Vec<PathBuf>, MountError> {
    let text = std::fs::read_to_string(mountinfo)
        .map_err(|source| MountError::Read { path: mountinfo.into(), source })?;
    Ok(parse_all(&text).into_iter().map(|(point, _)| point).filter(|point| point.starts_with(prefix)).collect())
}

fn parse_mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    parse_all(mountinfo).into_iter().filter(|(_, kind)| kind == fstype).map(|(point, _)| point).collect()
}

/// (mount point, filesystem type) of every line.
fn parse_all(mountinfo: &str) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let kind = after.split(' ').next()?;
            Some((PathBuf::from(unescape(mount_point)), kind.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..(i + 4).min(field.len())], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 30 0:40 / /sys/fs/bpf rw - bpf bpf rw
41 30 0:41 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        let points = parse_mount_points(HYBRID, "cgroup2");
        assert_eq!(points[0], PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(points[1], PathBuf::from("/mnt/with space"));
        assert_eq!(parse_mount_points(HYBRID, "bpf"), vec![PathBuf::from("/sys/fs/bpf")]);
        assert!(parse_mount_points(HYBRID, "xfs").is_empty());
    }
}
