//! The agent's own mount namespace, made in the child between fork and exec, as a
//! DaemonSet's container with a hostPath `/` at `/host` (readOnly, HostToContainer) sees
//! the node. The child only makes system calls on strings made before the fork; a failed
//! step writes its number to a pipe so the error can name it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::super::node::NodeLayout;
use super::super::{lab_dir, LabError};
use super::host_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Unshare = 1,
    Slave,
    Bind,
    ReadOnly,
    Hide,
}

impl Step {
    const ALL: [Step; 5] = [Step::Unshare, Step::Slave, Step::Bind, Step::ReadOnly, Step::Hide];
}

/// The child's part.
pub struct Entry {
    root: CString,
    host: CString,
    node: CString,
    tmpfs: CString,
    options: CString,
    report: RawFd,
}

/// The parent's part: reads which step failed.
pub struct Report {
    read: OwnedFd,
    // Open until the spawn returns, so the child inherits it.
    write: OwnedFd,
    lab: PathBuf,
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
    at(lab_dir(lab), host_dir(lab), NodeLayout::of(lab).root)
}

fn at(lab: PathBuf, host: PathBuf, node: PathBuf) -> Result<(Entry, Report), LabError> {
    let (read, write) = pipe(&host)?;
    let entry = Entry {
        root: cstring(Path::new("/"))?,
        host: cstring(&host)?,
        node: cstring(&node)?,
        tmpfs: cstring(Path::new("tmpfs"))?,
        options: cstring(Path::new("mode=0755"))?,
        report: write.as_raw_fd(),
    };
    Ok((entry, Report { read, write, lab, host, node }))
}

impl Entry {
    /// In the child. Order matters: the bind must see the node tree, the tmpfs then
    /// hides it, so the agent reaches node files only below the host's /.
    pub fn enter(&self) -> io::Result<()> {
        let (null, no_data) = (std::ptr::null(), std::ptr::null());
        // SAFETY: every pointer is a NUL-terminated string owned by self, or null.
        unsafe {
            self.check(Step::Unshare, libc::unshare(libc::CLONE_NEWNS))?;
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
            Some(Step::Unshare) => ("agent container: unshare(CLONE_NEWNS) for the agent of", self.lab),
            Some(Step::Slave) => ("agent container: mount --make-rslave", PathBuf::from("/")),
            Some(Step::Bind) => ("agent container: mount --rbind /", self.host),
            Some(Step::ReadOnly) => ("agent container: mount -o remount,bind,ro", self.host),
            Some(Step::Hide) => ("agent container: hiding the node tree: mount -t tmpfs -o ro tmpfs", self.node),
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
        let (entry, report) = at(dir.path().into(), missing.clone(), dir.path().join("node")).unwrap();
        let mut command = std::process::Command::new("true");
        // SAFETY: `enter` only makes system calls; the child's namespace is its own.
        unsafe { command.pre_exec(move || entry.enter()) };
        let error = command.spawn().map(drop).map_err(|e| report.error(e, &["true".into()])).unwrap_err();
        let expected = format!("agent container: mount --rbind / {}: No such file or directory (os error 2)", missing.display());
        assert_eq!(error.to_string(), expected);
    }
}
