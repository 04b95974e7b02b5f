//! Mount techniques: mount(2), fsopen(2), mknod(2) of a block device. Whatever they make is
//! undone right away, so the host is left as found.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::report::Report;
use crate::{c_path, c_string, Usage};

/// `mount FSTYPE SOURCE TARGET [--remount] [--bind] [--mkdir]`.
pub fn mount(fstype: &str, source: &str, target: &Path, remount: bool, bind: bool, mkdir: bool) -> Result<Report, Usage> {
    const T: &str = "mount";
    let (fstype_c, source_c, target_c) = (c_string(fstype)?, c_string(source)?, c_path(target)?);
    let mut made_dir = false;
    if mkdir {
        match std::fs::create_dir(target) {
            Ok(()) => made_dir = true,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Ok(Report::failed(T, &error, format!("creating {} (--mkdir)", target.display()))),
        }
    }
    let mut flags: libc::c_ulong = 0;
    if bind {
        flags |= libc::MS_BIND;
    }
    let mut kept = String::new();
    if remount {
        // A remount replaces the mount's flags: pass the current ones so nothing changes.
        match current_flags(&target_c) {
            Ok(current) => {
                flags |= libc::MS_REMOUNT | current;
                kept = format!(", current flags {current:#x} kept");
            }
            Err(error) => return Ok(Report::failed(T, &error, format!("statvfs {}", target.display()))),
        }
    }
    // SAFETY: every pointer is a NUL-terminated string alive across the call; data is NULL.
    let ret = unsafe { libc::mount(source_c.as_ptr(), target_c.as_ptr(), fstype_c.as_ptr(), flags, std::ptr::null()) };
    let what = format!("{fstype} {source} on {} (flags {flags:#x}{kept})", target.display());
    let report = if ret < 0 {
        Report::failed(T, &io::Error::last_os_error(), what)
    } else if remount {
        Report::done(T, format!("remounted {what}"))
    } else {
        // SAFETY: target_c is a valid string; MNT_DETACH removes the mount just made.
        let undone = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } == 0;
        let note = if undone { "unmounted again" } else { "could NOT unmount it again" };
        Report::done(T, format!("mounted {what}; {note}"))
    };
    if made_dir {
        let _ = std::fs::remove_dir(target);
    }
    Ok(report)
}

/// The MS_* flags a remount must repeat to keep `target` as it is (atime flags are kept by
/// the kernel when none is given).
fn current_flags(target: &CString) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs fills the zeroed struct; target is a valid string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(target.as_ptr(), &mut stat) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
        (libc::ST_MANDLOCK, libc::MS_MANDLOCK),
    ];
    Ok(pairs.iter().filter(|(st, _)| stat.f_flag & st != 0).fold(0, |flags, (_, ms)| flags | ms))
}

/// `fsopen FSTYPE`: a filesystem context is created and closed; nothing is mounted.
pub fn fsopen(fstype: &str) -> Result<Report, Usage> {
    const T: &str = "fsopen";
    let name = c_string(fstype)?;
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    // SAFETY: name is a valid string; the returned fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    let report = Report::from_ret(T, fd, format!("fsopen({fstype:?})"));
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as libc::c_int) };
    }
    Ok(report)
}

/// `mknod-block PATH MAJOR MINOR`: the node, if made, is removed at once.
pub fn mknod_block(path: &Path, major: u32, minor: u32) -> Result<Report, Usage> {
    const T: &str = "mknod-block";
    let path_c = c_path(path)?;
    let device = libc::makedev(major, minor);
    // SAFETY: path_c is a valid string.
    let ret = unsafe { libc::mknodat(libc::AT_FDCWD, path_c.as_ptr(), libc::S_IFBLK | 0o600, device) };
    let what = format!("block device {major}:{minor} at {}", path.display());
    if ret < 0 {
        return Ok(Report::failed(T, &io::Error::last_os_error(), what));
    }
    let note = match std::fs::remove_file(path) {
        Ok(()) => "removed again".to_string(),
        Err(error) => format!("could NOT remove it: {error}"),
    };
    Ok(Report::done(T, format!("made {what}; {note}")))
}
