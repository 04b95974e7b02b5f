//! cgroup/dev at the pods' root: refuses mknod and open of block devices from pods
//! (`escape.host-mount`: a pod that can open the node's disk owns the node). Works without
//! BPF LSM. Character devices are left to the runtime's own device cgroup rules.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::programs::DeviceContext;
use moat_common::event::{DETECTION_HOST_MOUNT, EVIDENCE_DEVICE, GUARD_HOOK_DEVICE, GUARD_MODE_BLOCK, GUARD_MODE_OFF};
use moat_common::guard::kernel_dev;

use super::{actor, report};
use crate::maps::GUARD_DEVICE_SEEN;

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// `BPF_DEVCG_DEV_BLOCK` in the low 16 bits of access_type.
const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_ACC_MKNOD` in the high 16 bits.
const ACC_MKNOD: u32 = 1;
/// The kernel checks a block device open twice (`inode_permission` on the path, then
/// `bdev_permission` as the device opens). In detect mode the first check lets the open go
/// on, so both would report: a thread's second check of the same device and access within
/// this long is the same open.
const SAME_OPEN_NS: u64 = 10_000_000;

pub fn on_device(ctx: &DeviceContext) -> i32 {
    // SAFETY: the program's own context.
    let (access_type, major, minor) = unsafe { ((*ctx.device).access_type, (*ctx.device).major, (*ctx.device).minor) };
    if access_type & 0xffff != DEV_BLOCK {
        return ALLOW;
    }
    let mode = report::mode(DETECTION_HOST_MOUNT);
    if mode == GUARD_MODE_OFF {
        return ALLOW;
    }
    let Some(settings) = actor::settings() else { return ALLOW };
    let Some(actor) = actor::current(&settings) else { return ALLOW };
    if !actor.in_pod {
        return ALLOW;
    }
    let blocked = mode == GUARD_MODE_BLOCK;
    // In detect mode the mknod probe reports mknod (with its path); report each action once.
    let mknod = (access_type >> 16) & ACC_MKNOD != 0;
    let dev = kernel_dev(major, minor);
    if blocked || (!mknod && first_check(dev, access_type)) {
        report::emit(DETECTION_HOST_MOUNT, GUARD_HOOK_DEVICE, blocked, &actor, EVIDENCE_DEVICE, |event| {
            // SAFETY: the reserved record.
            unsafe {
                (*event).arg = access_type as u64;
                (*event).dev = dev;
            }
        });
    }
    if blocked { REFUSE } else { ALLOW }
}

/// Whether this check is not the second of one open (see [`SAME_OPEN_NS`]); remembers it.
#[inline(always)]
fn first_check(dev: u64, access_type: u32) -> bool {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain-data key and value.
    if let Some(last) = unsafe { GUARD_DEVICE_SEEN.get(&thread) } {
        if last[0] == dev && last[1] == access_type as u64 && now.wrapping_sub(last[2]) < SAME_OPEN_NS {
            return false;
        }
    }
    let _ = GUARD_DEVICE_SEEN.insert(&thread, &[dev, access_type as u64, now], 0);
    true
}
