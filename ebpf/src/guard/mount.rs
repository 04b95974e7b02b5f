//! Which mounts are escapes: a cgroup filesystem (the release_agent route), debugfs, tracefs,
//! securityfs or bpffs, a remount of /proc or /sys, or a block device. Shared by the
//! sys_enter tracepoint (user strings) and lsm/sb_mount (kernel strings).

use super::bytes::{eq, starts};

pub enum MountKind {
    CgroupFs,
    HostMount,
    Normal,
}

const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;

/// `fstype[..fstype_len]` and the first bytes of the source; `remounts_kernel_fs` when the
/// target is /proc or /sys (how a caller knows differs).
#[inline(always)]
pub fn classify(fstype: &[u8; 16], fstype_len: usize, source: &[u8; 8], source_len: usize, flags: u64, target_is_kernel_fs: bool) -> MountKind {
    if starts(fstype, fstype_len, b"cgroup") {
        return MountKind::CgroupFs;
    }
    let kernel_fs = eq(fstype, fstype_len, b"debugfs")
        || eq(fstype, fstype_len, b"tracefs")
        || eq(fstype, fstype_len, b"securityfs")
        || eq(fstype, fstype_len, b"bpf");
    let remount = flags & MS_REMOUNT != 0
        && (eq(fstype, fstype_len, b"proc") || eq(fstype, fstype_len, b"sysfs") || target_is_kernel_fs);
    let block_device = flags & (MS_BIND | MS_REMOUNT) == 0 && starts(source, source_len, b"/dev/");
    if kernel_fs || remount || block_device { MountKind::HostMount } else { MountKind::Normal }
}
