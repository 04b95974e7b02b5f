//! `escape.runtime-socket` without BPF LSM: cgroup/connect_unix (Linux 6.7+) refuses a pod's
//! connect() to any path under which that pod reaches a container runtime's socket. The
//! agent lists those (pod, path) pairs in `GUARD_SOCKET_PATHS` from each pod's own mounts,
//! so a hostPath alias is refused and a pod's own socket of the same name is not.
//!
//! aya 0.14 cannot load this attach type, so the agent loads this program by hand
//! (`kernel::unix_connect`). It therefore reads maps only, never the `KERNEL_LAYOUT` global:
//! the two offsets it needs come in `GuardSettings`. It does not report either (reports need
//! the layout): it leaves the refusal in `GUARD_UNIX_REFUSED` for sys_exit to report. A path
//! it cannot see through (symlink, relative path) is caught by inode at sys_exit instead.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use aya_ebpf::programs::SockAddrContext;
use moat_common::event::{DETECTION_RUNTIME_SOCKET, GUARD_MODE_BLOCK};
use moat_common::guard::{SocketPath, UnixRefusal, SOCKET_PATH_LEN};

use super::{actor, report};
use crate::maps::{GUARD_SETTINGS, GUARD_SOCKET_PATHS, GUARD_UNIX_REFUSED};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH: usize = 2;

#[inline(always)]
pub fn connect(ctx: &SockAddrContext) -> i32 {
    if report::mode(DETECTION_RUNTIME_SOCKET) != GUARD_MODE_BLOCK {
        return ALLOW;
    }
    let Some(settings) = GUARD_SETTINGS.get(0) else { return ALLOW };
    if settings.ready == 0 || settings.sock_addr_uaddr == 0 || settings.sock_addr_uaddrlen == 0 {
        return ALLOW;
    }
    let Some(actor) = actor::current(settings) else { return ALLOW };
    if !actor.in_pod || actor.pod == 0 {
        return ALLOW;
    }
    let Some(key) = requested_path(ctx.sock_addr as usize, settings.sock_addr_uaddr as usize, settings.sock_addr_uaddrlen as usize, actor.pod) else {
        return ALLOW;
    };
    // SAFETY: plain-data key.
    let Some(socket) = (unsafe { GUARD_SOCKET_PATHS.get(&key) }) else { return ALLOW };
    let refusal = UnixRefusal { socket: *socket, path: key.path, _pad: [0; 4] };
    let _ = GUARD_UNIX_REFUSED.insert(&bpf_get_current_pid_tgid(), &refusal, 0);
    REFUSE
}

/// The path connect() names, as a `GUARD_SOCKET_PATHS` key of `pod`. The context is the
/// kernel's `bpf_sock_addr_kern`; its `uaddr` points at the kernel's copy of the address
/// (a sockaddr_storage, so reading all of `sun_path` stays inside it), `uaddrlen` says how
/// much of it the caller passed — `sun_path` need not be NUL-terminated.
#[inline(always)]
fn requested_path(kern: usize, uaddr_at: usize, uaddrlen_at: usize, pod: u64) -> Option<SocketPath> {
    // SAFETY: kernel memory read through the helper; offsets from the running kernel's BTF.
    let uaddr = unsafe { bpf_probe_read_kernel((kern + uaddr_at) as *const u64) }.ok()?;
    let len = unsafe { bpf_probe_read_kernel((kern + uaddrlen_at) as *const u32) }.ok()? as usize;
    if uaddr == 0 || len <= SUN_PATH {
        return None;
    }
    // The path is what the kernel takes: the bytes up to the first NUL or the passed length,
    // whichever comes first; the rest of the key stays zero, as the agent wrote its keys. A
    // string read with room for one byte past the passed length stops at either (the byte
    // past it, inside the kernel's sockaddr_storage, is overwritten with the NUL): one helper
    // call where a byte loop over the whole buffer cost ~60 ns more.
    let mut key = SocketPath { pod, path: [0; SOCKET_PATH_LEN], _pad: [0; 4] };
    let src = (uaddr as usize + SUN_PATH) as *const u8;
    let given = len - SUN_PATH;
    let room = if given < SOCKET_PATH_LEN { given + 1 } else { SOCKET_PATH_LEN };
    // Read back and checked where the helper gets it: the 6.12 verifier loses the bound of the
    // select above and refuses the read as unbounded (6.18 keeps it).
    // SAFETY: a read of a local.
    let room = unsafe { core::ptr::read_volatile(&room) };
    if room > SOCKET_PATH_LEN {
        return None;
    }
    let dest = key.path.get_mut(..room)?;
    // SAFETY: kernel memory read through the helper into the key's own bytes.
    let path_len = unsafe { bpf_probe_read_kernel_str_bytes(src, dest) }.ok()?.len();
    // Passed whole and filled up to the key's last byte (which the read makes the NUL): the
    // path may go on past what the key holds. The agent keeps only shorter paths, so it is
    // none of them.
    if given >= SOCKET_PATH_LEN && path_len == SOCKET_PATH_LEN - 1 && unsafe { bpf_probe_read_kernel(src.add(SOCKET_PATH_LEN - 1)) }.ok()? != 0u8 {
        return None;
    }
    // An abstract socket (leading NUL) has no path.
    (key.path[0] != 0).then_some(key)
}
