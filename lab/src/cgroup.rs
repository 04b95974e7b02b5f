//! The lab's cgroup v2 tree, one directory per lab so one `cgroup.kill` ends all of it:
//!
//! * `<cgroup2>/moat-lab-<name>/pods/<namespace>_<pod>`: pods (the agent's `cgroupRoot`);
//! * `<cgroup2>/moat-lab-<name>/external/<namespace>_<pod>`: external hosts, outside the tree
//!   the agent watches;
//! * `<cgroup2>/moat-lab-<name>/kubelet`: the stand-in kubelet, outside the pods' root as a
//!   real kubelet is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LabError;
use moat_agent::node::mounts;

pub const PODS: &str = "pods";
pub const EXTERNAL: &str = "external";
pub const KUBELET: &str = "kubelet";
/// `<lab root>/agent`: an agent run as in a container (`--agent-container`), as a
/// DaemonSet's pod has a cgroup of its own.
pub const AGENT: &str = "agent";

/// `moat-lab-<name>`: the lab's cgroup below the cgroup2 mount.
pub fn lab_cgroup_name(lab: &str) -> String {
    format!("moat-lab-{lab}")
}

/// `<cgroup2 mount>/moat-lab-<name>`: everything the lab runs.
pub fn lab_root(lab: &str) -> Result<PathBuf, LabError> {
    Ok(mounts::cgroup2()?.join(lab_cgroup_name(lab)))
}

/// `<lab root>/pods`: the pods' root, where the lab's agent attaches.
pub fn pods_root(lab_root: &Path) -> PathBuf {
    lab_root.join(PODS)
}

/// `<lab root>/external`, next to the pods' root: where `external` hosts live, outside the
/// tree the lab's agent watches.
pub fn external_root(pods_root: &Path) -> PathBuf {
    pods_root.with_file_name(EXTERNAL)
}

/// `<lab root>/kubelet`, next to the pods' root.
pub fn kubelet_dir(pods_root: &Path) -> PathBuf {
    pods_root.with_file_name(KUBELET)
}

pub fn pod_dir(root: &Path, namespace: &str, pod: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}"))
}

pub fn create(dir: &Path) -> Result<(), LabError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(LabError::io("creating cgroup", dir, error)),
    }
}

/// Kills every process in `dir` and below (cgroup.kill), then removes the tree bottom-up,
/// retrying while the dying processes leave. A missing directory is not an error.
pub fn destroy(dir: &Path) -> Result<(), LabError> {
    if !dir.exists() {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    if let Err(error) = std::fs::write(&kill, "1") {
        // Older kernels have no cgroup.kill: signal each process instead.
        tracing::debug!("{}: {error}; killing processes one by one", kill.display());
        for pid in pids_below(dir) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!("{}: {error}; retrying", dir.display());
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(LabError::io("removing cgroup", dir, error)),
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Every pid in `dir` and its descendants.
pub fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pids.extend(pids_below(&entry.path()));
            }
        }
    }
    pids
}
