//! Maps of the runtime guard, written by the agent, read by the guard programs.

/// Map names (see `maps::names` for the datapath's).
pub mod names {
    pub const GUARD_SETTINGS: &str = "GUARD_SETTINGS";
    pub const GUARD_ACTORS: &str = "GUARD_ACTORS";
    pub const GUARD_FILES: &str = "GUARD_FILES";
    pub const GUARD_DEVICES: &str = "GUARD_DEVICES";
    pub const GUARD_TAINTED: &str = "GUARD_TAINTED";
    pub const GUARD_SETNS: &str = "GUARD_SETNS";
    pub const GUARD_DEVICE_SEEN: &str = "GUARD_DEVICE_SEEN";
    pub const GUARD_API_SERVERS: &str = "GUARD_API_SERVERS";
    pub const GUARD_PORTS: &str = "GUARD_PORTS";
    pub const GUARD_SOCKET_PATHS: &str = "GUARD_SOCKET_PATHS";
    pub const GUARD_UNIX_REFUSED: &str = "GUARD_UNIX_REFUSED";
}

pub mod capacity {
    pub const GUARD_ACTORS: u32 = 65_536;
    pub const GUARD_FILES: u32 = 8_192;
    /// Pod volumes (65,536) and the filesystems that hold protected files (at most one per file).
    pub const GUARD_DEVICES: u32 = 65_536 + GUARD_FILES;
    pub const GUARD_TAINTED: u32 = 4_096;
    /// Threads inside setns at once.
    pub const GUARD_SETNS: u32 = 1_024;
    /// Threads whose last block device check is remembered (LRU).
    pub const GUARD_DEVICE_SEEN: u32 = 1_024;
    pub const GUARD_API_SERVERS: u32 = 64;
    pub const GUARD_PORTS: u32 = 16;
    /// (pod, path) pairs under which pods reach a runtime socket.
    pub const GUARD_SOCKET_PATHS: u32 = 16_384;
    /// Threads between a refused connect and its exit (LRU).
    pub const GUARD_UNIX_REFUSED: u32 = 1_024;
}

/// System calls, as records name them (`GuardEvent::owner` of call evidence).
pub const SYSCALL_IGNORED: u32 = 0;
pub const SYSCALL_OPEN: u32 = 1;
pub const SYSCALL_CONNECT: u32 = 2;
pub const SYSCALL_SETNS: u32 = 3;
pub const SYSCALL_MOUNT: u32 = 4;
pub const SYSCALL_FSOPEN: u32 = 5;
/// mknod(path, mode, dev)
pub const SYSCALL_MKNOD: u32 = 6;
/// mknodat(dfd, path, mode, dev)
pub const SYSCALL_MKNODAT: u32 = 7;
pub const SYSCALL_UNSHARE: u32 = 8;
pub const SYSCALL_INIT_MODULE: u32 = 9;
pub const SYSCALL_FINIT_MODULE: u32 = 10;
pub const SYSCALL_BPF: u32 = 11;
pub const SYSCALL_PERF_EVENT_OPEN: u32 = 12;
pub const SYSCALL_PTRACE: u32 = 13;
pub const SYSCALL_PROCESS_VM_WRITEV: u32 = 14;
/// Set in `GuardEvent::owner` when the rest is the architecture's syscall number (a
/// security hook knows the caller's number, not which of these it is).
pub const SYSCALL_NUMBER: u64 = 1 << 63;

/// Namespace slots of `GuardSettings::host_ns` and bits of a namespace mask.
pub const NS_UTS: usize = 0;
pub const NS_IPC: usize = 1;
pub const NS_MNT: usize = 2;
pub const NS_PID: usize = 3;
pub const NS_NET: usize = 4;
pub const NS_CGROUP: usize = 5;
pub const NS_COUNT: usize = 6;

/// Node-wide settings (`GUARD_SETTINGS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardSettings {
    /// The cgroup every pod's cgroup is below, and its level (root = 0): a task whose
    /// ancestor at that level is this cgroup is a pod's, known to the model or not.
    pub pods_root_cgroup: u64,
    pub pods_root_level: u32,
    /// 1 once the agent wrote the settings; the programs do nothing before.
    pub ready: u32,
    /// The kubelet: its executable's (dev, inode) and, if nonzero, its cgroup.
    pub kubelet_exe_dev: u64,
    pub kubelet_exe_ino: u64,
    pub kubelet_cgroup: u64,
    /// The host's namespace inode numbers, `NS_*` order.
    pub host_ns: [u32; NS_COUNT],
    /// Unused (was the BPF LSM hooks attached; each action is now seen by exactly one
    /// attached program, so no program needs to know which).
    pub _reserved: u32,
    /// The agent's own process: it reads kubeconfigs and uses bpf(); never an actor.
    pub agent_tgid: u32,
    /// `bpf_sock_addr_kern.uaddr` and `.uaddrlen` offsets for cgroup/connect_unix, which is
    /// loaded by hand without the `KERNEL_LAYOUT` global; 0 until known.
    pub sock_addr_uaddr: u32,
    pub sock_addr_uaddrlen: u32,
}

/// Who a cgroup belongs to (`GUARD_ACTORS`, keyed by cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// Pod tag: 64 bits of the pod's uid hash; the same in `GUARD_DEVICES`.
    pub pod: u64,
    /// `ACTOR_*`
    pub flags: u32,
    pub _pad: u32,
}

/// Never reported (the agent's own pod, exempt namespaces).
pub const ACTOR_EXEMPT: u32 = 1;
/// The pod shares the host's network namespace (hostNetwork).
pub const ACTOR_HOST_NETWORK: u32 = 2;
/// The pod shares the host's PID namespace (hostPID).
pub const ACTOR_HOST_PID: u32 = 4;

/// A file by identity: its superblock's device (kernel encoding) and inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// `GUARD_FILES` classes.
pub const FILE_KUBELET_CREDENTIAL: u32 = 1;
pub const FILE_RUNTIME_BINARY: u32 = 2;
pub const FILE_RUNTIME_SOCKET: u32 = 3;
/// A file of a pod's volume on a filesystem shared with others (a configMap volume on the
/// node's disk); tmpfs volumes are matched by superblock in `GUARD_DEVICES` instead.
pub const FILE_POD_VOLUME: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRule {
    /// `FILE_*`
    pub class: u32,
    pub _pad: u32,
    /// `FILE_POD_VOLUME`: the owning pod's tag.
    pub owner: u64,
}

/// A filesystem (superblock) the guard knows (`GUARD_DEVICES`, by `s_dev`): one that holds
/// protected files, or a pod's own volume, or both. A file open on any other filesystem
/// costs the guard one lookup, not one per map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRule {
    /// `DEVICE_*`
    pub flags: u32,
    pub _pad: u32,
    /// `DEVICE_POD_VOLUME`: the owning pod's tag.
    pub owner: u64,
}

/// Some `GUARD_FILES` entry is on this filesystem.
pub const DEVICE_HOLDS_FILES: u32 = 1;
/// A pod's secret/configMap/token volume, mounted on its own (tmpfs).
pub const DEVICE_POD_VOLUME: u32 = 2;

/// An API server endpoint (`GUARD_API_SERVERS`): IPv4-mapped address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Length of `sockaddr_un.sun_path`.
pub const SOCKET_PATH_LEN: usize = 108;

/// `GUARD_SOCKET_PATHS` key: a path under which one pod reaches a runtime socket, exactly as
/// connect() must name it (an absolute path in the pod's mount namespace), zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketPath {
    /// The pod's tag (`Actor::pod`).
    pub pod: u64,
    pub path: [u8; SOCKET_PATH_LEN],
    pub _pad: [u8; 4],
}

impl SocketPath {
    /// `None` when `path` does not fit `sun_path` (such a path cannot be connected to).
    pub fn new(pod: u64, path: &[u8]) -> Option<Self> {
        if path.is_empty() || path.len() >= SOCKET_PATH_LEN || path.contains(&0) {
            return None;
        }
        let mut key = Self { pod, path: [0; SOCKET_PATH_LEN], _pad: [0; 4] };
        key.path[..path.len()].copy_from_slice(path);
        Some(key)
    }
}

/// `GUARD_UNIX_REFUSED` value: what cgroup/connect_unix refused a thread, for its sys_exit
/// to report (the cgroup program cannot: it has no kernel layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixRefusal {
    /// The runtime socket the path leads to.
    pub socket: FileKey,
    pub path: [u8; SOCKET_PATH_LEN],
    pub _pad: [u8; 4],
}

/// `GUARD_SETNS` value: a pod's thread inside setns — its namespaces before the call and
/// the call's arguments (the exit tracepoint has none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetnsEntry {
    pub before: [u32; NS_COUNT],
    pub fd: u64,
    pub nstype: u64,
}

/// Kernel `dev_t` encoding (what `super_block.s_dev` holds) from userspace major/minor.
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | (minor as u64 & 0xfffff)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integer fields only, explicit padding (sizes asserted below).
    unsafe impl aya::Pod for GuardSettings {}
    unsafe impl aya::Pod for Actor {}
    unsafe impl aya::Pod for FileKey {}
    unsafe impl aya::Pod for FileRule {}
    unsafe impl aya::Pod for DeviceRule {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for SocketPath {}
    unsafe impl aya::Pod for UnixRefusal {}
    unsafe impl aya::Pod for SetnsEntry {}
}

const _: () = {
    assert!(core::mem::size_of::<GuardSettings>() == 80);
    assert!(core::mem::size_of::<SocketPath>() == 120);
    assert!(core::mem::size_of::<UnixRefusal>() == 128);
    assert!(core::mem::size_of::<Actor>() == 16);
    assert!(core::mem::size_of::<FileKey>() == 16);
    assert!(core::mem::size_of::<FileRule>() == 16);
    assert!(core::mem::size_of::<Endpoint>() == 24);
    assert!(core::mem::size_of::<SetnsEntry>() == 40);
};
