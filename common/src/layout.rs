//! Where the runtime guard's programs find what they read in kernel structures.
//!
//! aya-ebpf has no CO-RE relocations, so the agent reads the running kernel's BTF at start-up,
//! resolves every member below to a byte offset and hands the result to the programs as a
//! read-only global (`KERNEL_LAYOUT`). A member the kernel lacks fails the start-up with the
//! member's name instead of a program that reads the wrong bytes.
//!
//! Every field is the byte offset of a member from the start of its containing struct;
//! nested members (`ns.inum`, `__sk_common.skc_family`) are summed through anonymous
//! structs/unions. `u32` keeps the struct free of padding.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// 0 until the agent fills it: programs do nothing with an unfilled layout.
    pub filled: u32,

    // struct pt_regs: the syscall's arguments at sys_enter (x86_64: di si dx r10 r8 r9;
    // arm64: regs[0..6]) and, at sys_exit, the syscall number (orig_ax / syscallno) and the
    // first argument (di / orig_x0: arm64 overwrites x0 with the return value).
    pub regs_arg: [u32; 6],
    pub regs_syscall_nr: u32,
    pub regs_exit_arg0: u32,

    // struct task_struct
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_nsproxy: u32,
    pub task_cgroups: u32,
    pub task_comm: u32,
    /// css_set.dfl_cgrp → cgroup.kn → kernfs_node.id (the cgroup id).
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,

    // struct files_struct.fdt → struct fdtable { max_fds, fd }
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,

    // struct file
    pub file_inode: u32,
    pub file_path: u32,
    pub file_flags: u32,
    pub file_mode: u32,
    pub file_private_data: u32,

    // struct path
    pub path_mnt: u32,
    pub path_dentry: u32,

    // struct dentry, struct qstr
    pub dentry_name: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub qstr_name: u32,

    // struct inode, struct super_block
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_mode: u32,
    pub sb_dev: u32,
    pub sb_magic: u32,

    // struct mm_struct
    pub mm_exe_file: u32,

    // struct nsproxy, and `ns.inum` inside each namespace struct.
    pub nsproxy_uts: u32,
    pub nsproxy_ipc: u32,
    pub nsproxy_mnt: u32,
    pub nsproxy_pid: u32,
    pub nsproxy_net: u32,
    pub nsproxy_cgroup: u32,
    pub uts_ns_inum: u32,
    pub ipc_ns_inum: u32,
    pub mnt_ns_inum: u32,
    pub pid_ns_inum: u32,
    pub net_ns_inum: u32,
    pub cgroup_ns_inum: u32,

    // struct socket.sk, struct sock.__sk_common.skc_family, struct unix_sock { peer, path }
    pub socket_sk: u32,
    pub sock_family: u32,
    pub unix_sock_peer: u32,
    pub unix_sock_path: u32,
}

// SAFETY: repr(C), u32 fields only, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelLayout {}

const _: () = assert!(core::mem::size_of::<KernelLayout>().is_multiple_of(4));
