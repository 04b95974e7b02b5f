//! cgroup/dev at the pods' root: refuses mknod and open of block devices from pods
//! (`escape.host-mount`: a pod that can open the node's disk owns the node). Works without
//! BPF LSM. Character devices are left to the runtime's own device cgroup rules.

use aya_ebpf::programs::DeviceContext;
use moat_common::event::{DETECTION_HOST_MOUNT, GUARD_HOOK_DEVICE, GUARD_MODE_BLOCK, GUARD_MODE_OFF};

use super::{actor, report};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// `BPF_DEVCG_DEV_BLOCK` in the low 16 bits of access_type.
const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_ACC_MKNOD` in the high 16 bits.
const ACC_MKNOD: u32 = 1;

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
    // In detect mode the sys_enter tracepoint reports mknod; report each action once.
    let mknod = (access_type >> 16) & ACC_MKNOD != 0;
    if blocked || !mknod {
        if let Some(mut entry) = report::start(DETECTION_HOST_MOUNT, GUARD_HOOK_DEVICE, blocked, &actor) {
            let event = entry.as_mut_ptr();
            // SAFETY: the reserved record.
            unsafe {
                (*event).arg = access_type as u64;
                (*event).dev = moat_common::guard::kernel_dev(major, minor);
            }
            entry.submit(0);
        }
    }
    if blocked { REFUSE } else { ALLOW }
}
