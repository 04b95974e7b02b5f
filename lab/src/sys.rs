//! Thin wrappers over the system calls the lab's pods are made of (mounts, namespaces,
//! pidfds), returning `io::Result` so callers can name the object that failed.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2) of a new filesystem or a bind; `data` as for mount(8) `-o`.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(CString::new).transpose().map_err(io::Error::other)?;
    let data = data.map(CString::new).transpose().map_err(io::Error::other)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// A tmpfs at `target` (nosuid, nodev).
pub fn mount_tmpfs(target: &Path, options: &str) -> io::Result<()> {
    mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(options),
    )
}

/// Binds `source` (recursively) at `target`; `read_only` remounts the bind read-only.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount(Some(source), target, None, libc::MS_BIND | libc::MS_REC, None)?;
    if read_only {
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        mount(None, target, None, flags, None)?;
    }
    Ok(())
}

/// Lazy unmount (MNT_DETACH): gone from the tree at once, freed when no longer used.
pub fn detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::unshare(flags) })
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstring(new_root)?;
    let put_old = cstring(put_old)?;
    // SAFETY: two NUL-terminated paths.
    let result = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(result as libc::c_int)
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::chroot(path.as_ptr()) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length of a live buffer.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// A pidfd for `pid` (close-on-exec).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags, no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}
