//! Reads of kernel structures at the offsets the agent resolved from BTF (`KERNEL_LAYOUT`).
//! Every read goes through `bpf_probe_read_kernel`, so a stale pointer yields an error, not
//! a fault; callers treat an error as "nothing to see".

use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use moat_common::guard::NS_COUNT;
use moat_common::layout::KernelLayout;

/// Filled by the agent at load time (`EbpfLoader::set_global`); all zero (unfilled) otherwise.
#[unsafe(no_mangle)]
pub(crate) static KERNEL_LAYOUT: KernelLayout = unsafe { core::mem::zeroed() };

/// One offset, read so the compiler cannot fold the zero initialiser.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading our own global.
        unsafe { core::ptr::read_volatile(&$crate::guard::kernel::KERNEL_LAYOUT.$field) as usize }
    };
}
pub(crate) use offset;

/// Offset of a syscall's argument `n` (0..6) in `struct pt_regs`.
#[inline(always)]
pub fn regs_arg(n: usize) -> usize {
    let n = if n < 6 { n } else { 5 };
    // SAFETY: reading our own global, index bounded above.
    unsafe { core::ptr::read_volatile(&KERNEL_LAYOUT.regs_arg[n]) as usize }
}

#[inline(always)]
pub fn layout_filled() -> bool {
    offset!(filled) != 0
}

/// `*(T *)(base + offset)` in kernel memory.
#[inline(always)]
pub fn read<T>(base: usize, offset: usize) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T).ok() }
}

#[inline(always)]
pub fn ptr(base: usize, offset: usize) -> Option<usize> {
    read::<usize>(base, offset).filter(|p| *p != 0)
}

#[inline(always)]
pub fn current_task() -> usize {
    // SAFETY: no arguments, cannot fail.
    unsafe { bpf_get_current_task() as usize }
}

/// The current task's saved user registers (`struct pt_regs`), as a BTF pointer. Tracing
/// programs only: the helpers are theirs.
#[inline(always)]
pub fn current_regs() -> Option<usize> {
    // SAFETY: the current task's BTF pointer, as the helper requires.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
    (regs != 0).then_some(regs)
}

/// Argument `n` of the system call the current task is in (see [`current_regs`]).
#[inline(always)]
pub fn current_syscall_arg(n: usize) -> Option<u64> {
    read::<u64>(current_regs()?, regs_arg(n))
}

/// The first argument of the system call the current task is leaving, at its exit (the
/// register that still holds it: arm64 overwrites x0 with the return value). No null check:
/// the verifier cannot tell a checked BTF pointer from an unchecked one on a later branch,
/// and a direct load through null reads 0.
#[inline(always)]
pub fn current_syscall_exit_arg0() -> u64 {
    // SAFETY: the current task's BTF pointer, as the helper requires.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
    btf_load(regs, offset!(regs_exit_arg0))
}

/// The number of the system call the current task is in (see [`current_regs`]).
#[inline(always)]
pub fn current_syscall_nr() -> Option<u64> {
    read::<u64>(current_regs()?, offset!(regs_syscall_nr))
}

/// The current task as the verifier's BTF pointer (`struct task_struct *`), for
/// [`btf_load`]. Tracing programs only: the helper is theirs.
#[inline(always)]
fn current_task_btf() -> usize {
    // SAFETY: no arguments, cannot fail.
    unsafe { bpf_get_current_task_btf() as usize }
}

/// `*(T *)(base + offset)` as a direct load, for a `base` the verifier types by BTF (the
/// BTF task pointer, or a struct pointer loaded through one). The verifier checks the load
/// against the kernel's own type — it sees each `KERNEL_LAYOUT` offset as a constant, the
/// global being frozen read-only data — and the JIT makes it a plain move with a fault
/// fixup (a bad pointer reads 0), where `bpf_probe_read_kernel` is a helper call of
/// ~15 ns on this machine. On a scalar `base` the verifier refuses the program: callers
/// pass only BTF pointers.
#[inline(always)]
fn btf_load<T: Copy>(base: usize, offset: usize) -> T {
    // SAFETY: see above; the verifier guards the access.
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// A non-null pointer member, by [`btf_load`].
#[inline(always)]
fn btf_ptr(base: usize, offset: usize) -> Option<usize> {
    Some(btf_load::<usize>(base, offset)).filter(|p| *p != 0)
}

/// The `struct file` behind file descriptor `fd` of the current task: the task's file
/// table by direct loads, the table's entry (behind a pointer the verifier types as a
/// plain number) by one probe read.
#[inline(always)]
pub fn fd_file(fd: u64) -> Option<usize> {
    let files = btf_ptr(current_task_btf(), offset!(task_files))?;
    let fdt = btf_ptr(files, offset!(files_fdt))?;
    let max: u32 = btf_load(fdt, offset!(fdtable_max_fds));
    if fd >= max as u64 {
        return None;
    }
    let array: usize = btf_load(fdt, offset!(fdtable_fd));
    ptr(array, (fd as usize) * 8)
}

/// A file's identity: (superblock dev in kernel encoding, inode number, superblock magic).
#[derive(Clone, Copy)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub magic: u64,
}

/// An inode's identity in two probe reads where the layout allows (see [`read_words`]):
/// `i_sb` and `i_ino` lie 24 bytes apart, `s_dev` and `s_magic` 80. A probe read is a helper
/// call, and these reads were half of what the openat exit program cost.
#[inline(always)]
pub fn inode_id(inode: usize) -> Option<FileId> {
    let (sb, ino) = read_words::<4>(inode, offset!(inode_sb), offset!(inode_ino))?;
    if sb == 0 {
        return None;
    }
    let (dev, magic) = read_words::<12>(sb as usize, offset!(sb_dev), offset!(sb_magic))?;
    // `s_dev` is a u32: the low half of its word (little-endian, as every BPF target moat builds for).
    Some(FileId { dev: dev & 0xffff_ffff, ino, magic })
}

/// The u64 words at `base + first` and `base + second`: one probe read of the `WORDS` words
/// from `first` when `second` is a whole number of words after it and within them, else two
/// reads. The offsets come from `KERNEL_LAYOUT`, which the verifier sees as constants, so it
/// keeps only the branch this kernel's layout takes.
#[inline(always)]
fn read_words<const WORDS: usize>(base: usize, first: usize, second: usize) -> Option<(u64, u64)> {
    if base == 0 {
        return None;
    }
    if second >= first && (second - first) % 8 == 0 && (second - first) / 8 < WORDS {
        // SAFETY: probe_read_kernel validates the address.
        let words: [u64; WORDS] = unsafe { bpf_probe_read_kernel((base + first) as *const [u64; WORDS]).ok()? };
        return Some((words[0], *words.get((second - first) / 8)?));
    }
    Some((read(base, first)?, read(base, second)?))
}

#[inline(always)]
pub fn file_id(file: usize) -> Option<FileId> {
    inode_id(ptr(file, offset!(file_inode))?)
}

/// [`file_id`] for a `file` the verifier types by BTF (a BPF LSM or fentry argument): direct
/// loads, no helper calls.
#[inline(always)]
pub fn btf_file_id(file: usize) -> Option<FileId> {
    let inode = btf_ptr(file, offset!(file_inode))?;
    let sb = btf_ptr(inode, offset!(inode_sb))?;
    let dev: u32 = btf_load(sb, offset!(sb_dev));
    let magic: u64 = btf_load(sb, offset!(sb_magic));
    let ino: u64 = btf_load(inode, offset!(inode_ino));
    Some(FileId { dev: dev as u64, ino, magic })
}

/// `FMODE_WRITE`: the file was opened for writing.
pub const FMODE_WRITE: u32 = 0x2;

#[inline(always)]
pub fn file_mode(file: usize) -> u32 {
    read(file, offset!(file_mode)).unwrap_or(0)
}

#[inline(always)]
pub fn file_dentry(file: usize) -> Option<usize> {
    ptr(file, offset!(file_path) + offset!(path_dentry))
}

#[inline(always)]
pub fn dentry_parent(dentry: usize) -> Option<usize> {
    ptr(dentry, offset!(dentry_parent))
}

/// A dentry's name into `out` (NUL-terminated); returns its length without the NUL.
#[inline(always)]
pub fn dentry_name(dentry: usize, out: &mut [u8]) -> usize {
    let Some(name) = ptr(dentry, offset!(dentry_name) + offset!(qstr_name)) else {
        return 0;
    };
    // SAFETY: probe_read_kernel_str validates the address and bounds the copy by `out`.
    unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, out).map(|s| s.len()).unwrap_or(0) }
}

/// The current task's executable (dev, inode), for recognising the kubelet and runtimes.
#[inline(always)]
pub fn current_exe() -> Option<FileId> {
    file_id(current_exe_file()?)
}

/// The `struct file` of the current task's executable (`mm->exe_file`).
#[inline(always)]
pub fn current_exe_file() -> Option<usize> {
    let mm = ptr(current_task(), offset!(task_mm))?;
    ptr(mm, offset!(mm_exe_file))
}

#[inline(always)]
pub fn parent_tgid() -> u32 {
    ptr(current_task(), offset!(task_real_parent)).and_then(|p| read(p, offset!(task_tgid))).unwrap_or(0)
}

#[inline(always)]
pub fn task_tgid(task: usize) -> u32 {
    read(task, offset!(task_tgid)).unwrap_or(0)
}

/// The current task's namespace inode numbers, `NS_*` order (0 where unreadable).
#[inline(always)]
pub fn current_namespaces() -> [u32; NS_COUNT] {
    let mut out = [0u32; NS_COUNT];
    let Some(nsproxy) = ptr(current_task(), offset!(task_nsproxy)) else { return out };
    let slots = [
        (offset!(nsproxy_uts), offset!(uts_ns_inum)),
        (offset!(nsproxy_ipc), offset!(ipc_ns_inum)),
        (offset!(nsproxy_mnt), offset!(mnt_ns_inum)),
        (offset!(nsproxy_pid), offset!(pid_ns_inum)),
        (offset!(nsproxy_net), offset!(net_ns_inum)),
        (offset!(nsproxy_cgroup), offset!(cgroup_ns_inum)),
    ];
    let mut i = 0;
    while i < NS_COUNT {
        let (member, inum) = slots[i];
        if let Some(ns) = ptr(nsproxy, member) {
            out[i] = read(ns, inum).unwrap_or(0);
        }
        i += 1;
    }
    out
}

/// A socket file's `struct sock` if it is an AF_UNIX socket, `None` for any other file.
#[inline(always)]
pub fn unix_sock(file: usize) -> Option<usize> {
    let socket = ptr(file, offset!(file_private_data))?;
    let sk = ptr(socket, offset!(socket_sk))?;
    let family: u16 = read(sk, offset!(sock_family))?;
    (family == AF_UNIX).then_some(sk)
}

/// For a connected AF_UNIX socket (`unix_sock`'s): the (dev, inode) of the socket file its
/// peer is bound to (a stream connect copies the listener's path into the peer).
#[inline(always)]
pub fn unix_peer_id(sk: usize) -> Option<FileId> {
    let peer = ptr(sk, offset!(unix_sock_peer))?;
    let dentry = ptr(peer, offset!(unix_sock_path) + offset!(path_dentry))?;
    inode_id(ptr(dentry, offset!(dentry_inode))?)
}

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
