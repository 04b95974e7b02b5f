//! Makes sure bpffs is mounted and lays out the per-instance pin directory:
//! `<bpffs>/moat/<instance>/v<layout>/{maps,links,tc}`. The layout version in the path keeps an
//! agent from adopting maps whose key or value layout it does not understand.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::KernelError;
use crate::node::mounts;

#[derive(Clone, Debug)]
pub struct PinDirs {
    pub instance: PathBuf,
    pub maps: PathBuf,
    pub links: PathBuf,
    /// Links of the ICMP program on pod interfaces, a directory per pod.
    pub tc: PathBuf,
}

pub fn pin_dirs(bpffs_root: &Path, instance: &str) -> PinDirs {
    let instance_dir = bpffs_root.join("moat").join(instance);
    let versioned = instance_dir.join(format!("v{}", moat_common::LAYOUT_VERSION));
    PinDirs {
        instance: instance_dir,
        maps: versioned.join("maps"),
        links: versioned.join("links"),
        tc: versioned.join("tc"),
    }
}

/// Removes the instance's pins and directories, and `<bpffs>/moat` if nothing else is left in
/// it: for a start that created them and failed before its first apply.
pub fn remove_instance(dirs: &PinDirs) {
    if let Err(error) = std::fs::remove_dir_all(&dirs.instance) {
        tracing::warn!(path = %dirs.instance.display(), %error, "removing this start's pins failed");
    }
    if let Some(parent) = dirs.instance.parent() {
        // Fails while another instance's pins are there, as it should.
        let _ = std::fs::remove_dir(parent);
    }
}

/// Mounts bpffs at `root` unless one is there already, then creates the pin directories.
pub fn prepare(root: &Path, dirs: &PinDirs) -> Result<(), KernelError> {
    let error = |message: String| KernelError::Bpffs { path: root.into(), message };
    let mounted = mounts::is_mounted(root, "bpf").map_err(|e| error(e.to_string()))?;
    if !mounted {
        std::fs::create_dir_all(root).map_err(|e| error(format!("creating mount point: {e}")))?;
        let target = CString::new(root.as_os_str().as_bytes()).map_err(|e| error(e.to_string()))?;
        let fstype = c"bpf";
        let data = c"mode=0700";
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(error(format!("mount -t bpf failed: {}", std::io::Error::last_os_error())));
        }
    }
    for dir in [&dirs.maps, &dirs.links, &dirs.tc] {
        std::fs::create_dir_all(dir).map_err(|e| error(format!("creating {}: {e}", dir.display())))?;
    }
    Ok(())
}
