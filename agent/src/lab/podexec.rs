//! Running a process inside a lab pod: in the pod's network namespace and cgroup, so the
//! sockets it creates belong to the pod (moat's eBPF programs identify pods by socket cgroup).
//!
//! Everything that can fail or allocate (opening the netns and `cgroup.procs`) happens before
//! fork; the child only calls setns(2), write(2) and, when detached, setsid(2).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LabError;

/// Where a pod lives.
#[derive(Clone, Debug)]
pub struct PodPlace {
    /// Bind mount of the pod's network namespace (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
}

impl PodPlace {
    pub fn new(netns: impl Into<PathBuf>, cgroup: impl Into<PathBuf>) -> Self {
        Self {
            netns: netns.into(),
            cgroup: cgroup.into(),
        }
    }

    /// A command for `program` that starts inside the pod. `detach` puts it in a session of
    /// its own (setsid), so it outlives the terminal and the calling `moat`.
    pub fn command(&self, program: impl AsRef<OsStr>, detach: bool) -> Result<Command, LabError> {
        let netns: OwnedFd = File::open(&self.netns)
            .map_err(|e| LabError::io("opening netns", &self.netns, e))?
            .into();
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs: OwnedFd = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| LabError::io("opening", &procs_path, e))?
            .into();
        let mut command = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe system calls on fds opened above
        // (O_CLOEXEC, so the program never inherits them) and allocates nothing.
        unsafe {
            command.pre_exec(move || enter(&netns, &procs, detach));
        }
        Ok(command)
    }

    /// A command running this `moat` binary inside the pod.
    pub fn moat(&self, detach: bool) -> Result<Command, LabError> {
        let exe = current_exe()?;
        self.command(exe, detach)
    }
}

/// The running `moat` binary.
pub fn current_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|e| LabError::io("finding", Path::new("/proc/self/exe"), e))
}

/// Runs in the forked child, before exec.
fn enter(netns: &OwnedFd, procs: &OwnedFd, detach: bool) -> io::Result<()> {
    // SAFETY: plain system calls on open fds and a static buffer.
    unsafe {
        if detach && libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        // "0" moves the writing process itself.
        let zero = b"0";
        if libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
