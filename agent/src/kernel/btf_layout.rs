//! `KernelLayout` from the running kernel's BTF: the byte offsets the guard programs read at,
//! resolved by member name, so a kernel that moved or renamed a member fails the start-up
//! naming it instead of running programs that read the wrong bytes.

mod btf;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use moat_common::layout::KernelLayout;

pub use btf::Btf;

/// The running kernel's BTF.
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading kernel BTF {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(String),
    #[error("kernel BTF: no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {struct_name} has no member \"{member}\"")]
    NoMember { struct_name: String, member: String },
    #[error("kernel BTF: struct {struct_name} has no member \"{member}\": \"{parent}\" is not a struct or union")]
    NotComposite { struct_name: String, member: String, parent: String },
    #[error("kernel BTF: struct {struct_name} member \"{member}\" is at bit {bit_offset}, not on a byte boundary")]
    NotByteAligned { struct_name: String, member: String, bit_offset: u64 },
    #[error("kernel layout: pt_regs member names are unknown for architecture {0}")]
    UnsupportedArch(&'static str),
}

/// Reads `/sys/kernel/btf/vmlinux` and resolves the whole layout.
pub fn load() -> Result<KernelLayout, LayoutError> {
    kernel_layout(&read()?)
}

/// Every field of `KernelLayout` from `btf`, with `filled = 1`.
pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout, LayoutError> {
    let regs = pt_regs(btf)?;
    let at = |struct_name: &str, member: &str| btf.offset_of(struct_name, member);
    Ok(KernelLayout {
        filled: 1,
        regs_arg: regs.args,
        regs_syscall_nr: regs.syscall_nr,
        regs_exit_arg0: regs.exit_arg0,
        task_tgid: at("task_struct", "tgid")?,
        task_real_parent: at("task_struct", "real_parent")?,
        task_files: at("task_struct", "files")?,
        task_mm: at("task_struct", "mm")?,
        task_nsproxy: at("task_struct", "nsproxy")?,
        task_cgroups: at("task_struct", "cgroups")?,
        task_comm: at("task_struct", "comm")?,
        css_set_dfl_cgrp: at("css_set", "dfl_cgrp")?,
        cgroup_kn: at("cgroup", "kn")?,
        kernfs_node_id: at("kernfs_node", "id")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        fdtable_fd: at("fdtable", "fd")?,
        file_inode: at("file", "f_inode")?,
        file_path: at("file", "f_path")?,
        file_flags: at("file", "f_flags")?,
        file_mode: at("file", "f_mode")?,
        file_private_data: at("file", "private_data")?,
        path_mnt: at("path", "mnt")?,
        path_dentry: at("path", "dentry")?,
        dentry_name: at("dentry", "d_name")?,
        dentry_parent: at("dentry", "d_parent")?,
        dentry_inode: at("dentry", "d_inode")?,
        qstr_name: at("qstr", "name")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        inode_mode: at("inode", "i_mode")?,
        sb_dev: at("super_block", "s_dev")?,
        sb_magic: at("super_block", "s_magic")?,
        mm_exe_file: at("mm_struct", "exe_file")?,
        nsproxy_uts: at("nsproxy", "uts_ns")?,
        nsproxy_ipc: at("nsproxy", "ipc_ns")?,
        nsproxy_mnt: at("nsproxy", "mnt_ns")?,
        // nsproxy has no `pid_ns`: it holds the pid namespace of the task's future children,
        // which is the task's own unless it called unshare(CLONE_NEWPID) / setns since.
        nsproxy_pid: at("nsproxy", "pid_ns_for_children")?,
        nsproxy_net: at("nsproxy", "net_ns")?,
        nsproxy_cgroup: at("nsproxy", "cgroup_ns")?,
        uts_ns_inum: at("uts_namespace", "ns.inum")?,
        ipc_ns_inum: at("ipc_namespace", "ns.inum")?,
        mnt_ns_inum: at("mnt_namespace", "ns.inum")?,
        pid_ns_inum: at("pid_namespace", "ns.inum")?,
        net_ns_inum: at("net", "ns.inum")?,
        cgroup_ns_inum: at("cgroup_namespace", "ns.inum")?,
        socket_sk: at("socket", "sk")?,
        sock_family: at("sock", "__sk_common.skc_family")?,
        unix_sock_peer: at("unix_sock", "peer")?,
        unix_sock_path: at("unix_sock", "path")?,
    })
}

/// Where a syscall's arguments, and at exit its number and first argument, sit in pt_regs.
struct Regs {
    args: [u32; 6],
    syscall_nr: u32,
    exit_arg0: u32,
}

/// The member names differ per architecture; both mappings are compiled everywhere so the tests
/// cover both, and the build target picks one.
fn pt_regs(btf: &Btf) -> Result<Regs, LayoutError> {
    if cfg!(target_arch = "x86_64") {
        pt_regs_x86_64(btf)
    } else if cfg!(target_arch = "aarch64") {
        pt_regs_aarch64(btf)
    } else {
        Err(LayoutError::UnsupportedArch(std::env::consts::ARCH))
    }
}

/// The syscall ABI passes the fourth argument in r10 (rcx is clobbered by `syscall`).
fn pt_regs_x86_64(btf: &Btf) -> Result<Regs, LayoutError> {
    let at = |member: &str| btf.offset_of("pt_regs", member);
    let args = [at("di")?, at("si")?, at("dx")?, at("r10")?, at("r8")?, at("r9")?];
    Ok(Regs { args, syscall_nr: at("orig_ax")?, exit_arg0: at("di")? })
}

/// `regs` is `u64 regs[31]`; x0 holds the return value at exit, so the first argument is
/// read from `orig_x0`.
fn pt_regs_aarch64(btf: &Btf) -> Result<Regs, LayoutError> {
    let at = |member: &str| btf.offset_of("pt_regs", member);
    let regs = at("regs")?;
    let args = [0, 1, 2, 3, 4, 5].map(|i| regs + 8 * i);
    Ok(Regs { args, syscall_nr: at("syscallno")?, exit_arg0: at("orig_x0")? })
}

/// A BPF LSM hook's parameter count (`bpf_lsm_<hook>`): where a program finds the previous
/// programs' verdict. None when the kernel has no such hook.
pub fn lsm_hook_params(btf: &Btf, hook: &str) -> Option<u32> {
    btf.param_count(&format!("bpf_lsm_{hook}"))
}

/// The running kernel's BTF, parsed by the project's own reader.
pub fn read() -> Result<Btf, LayoutError> {
    let path = Path::new(BTF_PATH);
    let bytes = std::fs::read(path).map_err(|source| LayoutError::Read { path: path.into(), source })?;
    Btf::parse(&bytes)
}
