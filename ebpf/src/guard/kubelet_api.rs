//! `cred.kubelet-api` for pods: a connect to a kubelet API port on any address, refused by
//! the cgroup connect hooks (no BPF LSM needed) ahead of tenant and NetworkPolicy rules.

use moat_common::event::{DETECTION_KUBELET_API, EVIDENCE_ADDRESS, GUARD_HOOK_CONNECT, GUARD_MODE_BLOCK, GUARD_MODE_OFF};

use super::{actor, report};
use crate::maps::GUARD_PORTS;

/// True when the connect must be refused. Reports in detect and block mode.
#[inline(always)]
pub fn kubelet_port(port: u16, addr: &[u8; 16]) -> bool {
    // SAFETY: plain-data key.
    if unsafe { GUARD_PORTS.get(&port) }.is_none() {
        return false;
    }
    let mode = report::mode(DETECTION_KUBELET_API);
    if mode == GUARD_MODE_OFF {
        return false;
    }
    let Some(settings) = actor::settings() else { return false };
    let Some(actor) = actor::current(&settings) else { return false };
    let blocked = mode == GUARD_MODE_BLOCK;
    report::emit(DETECTION_KUBELET_API, GUARD_HOOK_CONNECT, blocked, &actor, EVIDENCE_ADDRESS, |event| {
        // SAFETY: the reserved record.
        unsafe {
            (*event).arg = port as u64;
            (&mut (*event).subject)[..16].copy_from_slice(addr);
        }
    });
    blocked
}
