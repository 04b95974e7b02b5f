//! A pinned bpf_link for a cgroup_sysctl or cgroup_device program. aya 0.14 makes such links
//! but cannot hand them out as an `FdLink` to pin, so this creates and pins the link itself with
//! the two `bpf()` commands involved; afterwards it is an ordinary pinned link that
//! `PinnedLink::from_pin` opens and `unpin` detaches like every other program's.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `enum bpf_cmd` and `enum bpf_attach_type` values from the kernel's uapi.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_CGROUP_SYSCTL: u32 = 18;

/// Every `bpf()` command takes a `union bpf_attr`; unused bytes must be zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 12],
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
    _rest: [u64; 12],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, zero-padded bpf_attr for `cmd`, alive for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

/// Attaches `program` (a loaded cgroup program of `attach_type`) to `cgroup` and pins the
/// link at `pin`.
pub fn attach_pinned(program: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32, pin: &Path) -> Result<(), String> {
    let mut create = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut create).map_err(|e| format!("bpf_link_create: {e}"))?;
    // SAFETY: BPF_LINK_CREATE returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(|e| format!("pin path: {e}"))?;
    let mut pin_attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut pin_attr).map_err(|e| format!("BPF_OBJ_PIN {}: {e}", pin.display()))?;
    // The pin keeps the link (and so the attachment) alive once `link` is closed here.
    drop(link);
    Ok(())
}
