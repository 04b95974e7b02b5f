//! Namespace techniques: setns(2) by path or pidfd, unshare(CLONE_NEWUSER). A successful
//! call changes only this process, which exits right after.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::args::NsType;
use crate::report::Report;

/// `setns PATH [--type T]`.
pub fn setns(path: &Path, ns_type: NsType) -> Report {
    const T: &str = "setns";
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return Report::failed(T, &error, format!("opening {}", path.display())),
    };
    // SAFETY: a plain system call on an fd we own.
    let ret = unsafe { libc::setns(file.as_raw_fd(), ns_type.flag()) };
    Report::from_ret(T, ret.into(), format!("setns({}, {ns_type:?})", path.display()))
}

/// Every namespace a pidfd setns can join, and their names.
const PID_NAMESPACES: [(libc::c_int, &str); 6] = [
    (libc::CLONE_NEWNET, "net"),
    (libc::CLONE_NEWNS, "mnt"),
    (libc::CLONE_NEWPID, "pid"),
    (libc::CLONE_NEWUTS, "uts"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWCGROUP, "cgroup"),
];

/// `setns-pid PID`: pidfd_open(2), then setns(2) with every namespace type at once. The user
/// namespace is included only when PID's differs from ours: joining one's own user
/// namespace is EINVAL, which would hide what the rest of the call does.
pub fn setns_pid(pid: i32) -> Report {
    const T: &str = "setns-pid";
    // SAFETY: pidfd_open takes a pid and flags; the fd is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Report::failed(T, &io::Error::last_os_error(), format!("pidfd_open({pid})"));
    }
    let mut flags = 0;
    let mut names: Vec<&str> = Vec::new();
    for (flag, name) in PID_NAMESPACES {
        flags |= flag;
        names.push(name);
    }
    if same_user_namespace(pid) == Some(false) {
        flags |= libc::CLONE_NEWUSER;
        names.push("user");
    }
    // SAFETY: pidfd is ours; closed once, after the call.
    let ret = unsafe { libc::setns(pidfd as libc::c_int, flags) };
    let report = Report::from_ret(T, ret.into(), format!("setns(pidfd of {pid}, {})", names.join("|")));
    unsafe { libc::close(pidfd as libc::c_int) };
    report
}

/// Whether PID is in this process's user namespace (None: cannot tell).
fn same_user_namespace(pid: i32) -> Option<bool> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
    let ours = std::fs::read_link("/proc/self/ns/user").ok()?;
    Some(theirs == ours)
}

/// `unshare-user`.
pub fn unshare_user() -> Report {
    // SAFETY: a plain system call; this process is single-threaded, as unshare of a user
    // namespace requires.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    Report::from_ret("unshare-user", ret.into(), "unshare(CLONE_NEWUSER)")
}
