//! The agent's own mount namespace, made in the child between fork and exec, as a
//! DaemonSet's container with a hostPath `/` at `/host` (readOnly, HostToContainer) sees
//! the node, in a cgroup namespace of its own, and with only the capabilities the DaemonSet
//! grants. The child only makes system calls on strings made before the fork; a failed
//! step writes its number to a pipe so the error can name it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::super::node::NodeLayout;
use super::super::{cgroup, lab_dir, LabError};
use super::host_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Cgroup = 1,
    Unshare,
    Slave,
    Bind,
    ReadOnly,
    Hide,
    Capabilities,
}

impl Step {
    const ALL: [Step; 7] = [Step::Cgroup, Step::Unshare, Step::Slave, Step::Bind, Step::ReadOnly, Step::Hide, Step::Capabilities];
}

/// deploy/daemonset.yaml's `capabilities.add` (after `drop: ["ALL"]`), by number
/// (linux/capability.h); the integration test holds the two equal.
const DAEMONSET_CAPABILITIES: [libc::c_int; 6] = [
    12, // NET_ADMIN
    19, // SYS_PTRACE
    21, // SYS_ADMIN
    24, // SYS_RESOURCE
    38, // PERFMON
    39, // BPF
];

/// Every capability this kernel knows that the DaemonSet does not grant.
fn capabilities_to_drop() -> Result<Vec<libc::c_int>, LabError> {
    let path = Path::new("/proc/sys/kernel/cap_last_cap");
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io("reading", path, e))?;
    let last: libc::c_int = text.trim().parse().map_err(|e| LabError::Internal(format!("{}: {text:?}: {e}", path.display())))?;
    Ok((0..=last).filter(|cap| !DAEMONSET_CAPABILITIES.contains(cap)).collect())
}

/// The child's part.
pub struct Entry {
    /// `<lab cgroup>/agent/cgroup.procs`.
    cgroup_procs: CString,
    root: CString,
    host: CString,
    node: CString,
    tmpfs: CString,
    options: CString,
    drop: Vec<libc::c_int>,
    report: RawFd,
}

/// The parent's part: reads which step failed.
pub struct Report {
    read: OwnedFd,
    // Open until the spawn returns, so the child inherits it.
    write: OwnedFd,
    lab: PathBuf,
    cgroup: PathBuf,
    host: PathBuf,
    node: PathBuf,
}

fn cstring(path: &Path) -> Result<CString, LabError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| LabError::Internal(format!("{}: path contains a NUL byte", path.display())))
}

/// A close-on-exec pipe whose read end never blocks.
fn pipe(host: &Path) -> Result<(OwnedFd, OwnedFd), LabError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(LabError::io("creating a pipe for the agent of", host, io::Error::last_os_error()));
    }
    // SAFETY: both fds were just returned by the kernel and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn prepare(lab: &str) -> Result<(Entry, Report), LabError> {
    let cgroup = cgroup::lab_root(lab)?.join(cgroup::AGENT);
    cgroup::create(&cgroup)?;
    at(lab_dir(lab), cgroup, host_dir(lab), NodeLayout::of(lab).root)
}

fn at(lab: PathBuf, cgroup: PathBuf, host: PathBuf, node: PathBuf) -> Result<(Entry, Report), LabError> {
    let (read, write) = pipe(&host)?;
    let entry = Entry {
        cgroup_procs: cstring(&cgroup.join("cgroup.procs"))?,
        root: cstring(Path::new("/"))?,
        host: cstring(&host)?,
        node: cstring(&node)?,
        tmpfs: cstring(Path::new("tmpfs"))?,
        options: cstring(Path::new("mode=0755"))?,
        drop: capabilities_to_drop()?,
        report: write.as_raw_fd(),
    };
    Ok((entry, Report { read, write, lab, cgroup, host, node }))
}

impl Entry {
    /// In the child. Order matters: the bind must see the node tree, the tmpfs then
    /// hides it, so the agent reaches node files only below the host's /.
    pub fn enter(&self) -> io::Result<()> {
        let (null, no_data) = (std::ptr::null(), std::ptr::null());
        // SAFETY: every pointer is a NUL-terminated string owned by self, or null.
        unsafe {
            // Into a cgroup of its own first: the cgroup namespace below is rooted there, as
            // a pod's container's is at its own cgroup. "0" is the writer itself.
            let procs = libc::open(self.cgroup_procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            self.check(Step::Cgroup, procs.min(0))?;
            let written = libc::write(procs, b"0".as_ptr().cast(), 1);
            libc::close(procs);
            self.check(Step::Cgroup, if written == 1 { 0 } else { -1 })?;
            // A cgroup namespace too: containerd gives a non-privileged container one on
            // cgroup v2, so /proc shows the agent other cgroups as `/../..`.
            self.check(Step::Unshare, libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP))?;
            // Mounts the host makes later still arrive (HostToContainer); none made here
            // leaves.
            let slave = libc::MS_REC | libc::MS_SLAVE;
            self.check(Step::Slave, libc::mount(null, self.root.as_ptr(), null, slave, no_data))?;
            let bind = libc::MS_BIND | libc::MS_REC;
            self.check(Step::Bind, libc::mount(self.root.as_ptr(), self.host.as_ptr(), null, bind, no_data))?;
            // The top level only, as Kubernetes does for a readOnly hostPath.
            let read_only = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            self.check(Step::ReadOnly, libc::mount(null, self.host.as_ptr(), null, read_only, no_data))?;
            let hide = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let tmpfs = self.tmpfs.as_ptr();
            self.check(Step::Hide, libc::mount(tmpfs, self.node.as_ptr(), tmpfs, hide, self.options.as_ptr().cast()))?;
            // Last: the mounts above need CAP_SYS_ADMIN only, which stays. Root's exec then
            // gets exactly the bounding set, as a container runtime sets it.
            let ambient = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
            self.check(Step::Capabilities, libc::prctl(libc::PR_CAP_AMBIENT, ambient, 0, 0, 0))?;
            for cap in &self.drop {
                self.check(Step::Capabilities, libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0))?;
            }
        }
        Ok(())
    }

    fn check(&self, step: Step, result: libc::c_int) -> io::Result<()> {
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        let byte = step as u8;
        // SAFETY: one byte from a live local. A lost report only makes the error vaguer.
        unsafe { libc::write(self.report, std::ptr::addr_of!(byte).cast(), 1) };
        Err(error)
    }
}

impl Report {
    /// The error of a failed spawn: the step the child reported, else the spawn's own.
    /// The child reported before it failed and the spawn returns after that, so the
    /// byte is there or never comes.
    pub fn error(self, source: io::Error, argv: &[String]) -> LabError {
        let mut byte = [0u8];
        let step = match File::from(self.read).read(&mut byte) {
            Ok(1) => Step::ALL.into_iter().find(|step| *step as u8 == byte[0]),
            _ => None,
        };
        drop(self.write);
        let (action, path) = match step {
            Some(Step::Cgroup) => ("agent container: moving the agent into", self.cgroup),
            Some(Step::Unshare) => ("agent container: unshare(CLONE_NEWNS | CLONE_NEWCGROUP) for the agent of", self.lab),
            Some(Step::Slave) => ("agent container: mount --make-rslave", PathBuf::from("/")),
            Some(Step::Bind) => ("agent container: mount --rbind /", self.host),
            Some(Step::ReadOnly) => ("agent container: mount -o remount,bind,ro", self.host),
            Some(Step::Hide) => ("agent container: hiding the node tree: mount -t tmpfs -o ro tmpfs", self.node),
            Some(Step::Capabilities) => ("agent container: dropping the capabilities deploy/daemonset.yaml does not add, for the agent of", self.lab),
            None => return LabError::Spawn { command: argv.join(" "), source },
        };
        LabError::io(action, path, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_failed_step_is_named() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: unshare(CLONE_NEWNS) needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        // A plain file takes the write a cgroup.procs would.
        std::fs::create_dir(dir.path().join("cgroup")).unwrap();
        std::fs::write(dir.path().join("cgroup/cgroup.procs"), "").unwrap();
        let (entry, report) = at(dir.path().into(), dir.path().join("cgroup"), missing.clone(), dir.path().join("node")).unwrap();
        let mut command = std::process::Command::new("true");
        // SAFETY: `enter` only makes system calls; the child's namespace is its own.
        unsafe { command.pre_exec(move || entry.enter()) };
        let error = command.spawn().map(drop).map_err(|e| report.error(e, &["true".into()])).unwrap_err();
        let expected = format!("agent container: mount --rbind / {}: No such file or directory (os error 2)", missing.display());
        assert_eq!(error.to_string(), expected);
    }
}
