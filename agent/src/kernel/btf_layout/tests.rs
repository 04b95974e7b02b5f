use std::path::Path;

use moat_common::layout::KernelLayout;

use super::{kernel_layout, load, pt_regs_aarch64, pt_regs_x86_64, Btf, LayoutError};
use crate::kernel::btf_layout::BTF_PATH;

/// Builds a little-endian BTF blob type by type (ids from 1, in call order).
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Builder { types: Vec::new(), strings: vec![0] }
    }

    fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset
    }

    fn words(&mut self, words: &[u32]) {
        for word in words {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
    }

    /// A type record: name, kind, vlen, kind_flag, size/type, then `extra` trailing words.
    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32, extra: &[u32]) {
        let name_off = self.name(name);
        self.words(&[name_off, (u32::from(kind_flag) << 31) | (kind << 24) | vlen, size_or_type]);
        self.words(extra);
    }

    /// STRUCT (4) or UNION (5) with members (name, type id, offset word).
    fn composite(&mut self, kind: u32, name: &str, size: u32, kind_flag: bool, members: &[(&str, u32, u32)]) {
        let mut extra = Vec::new();
        for (member, type_id, offset) in members {
            extra.extend([self.name(member), *type_id, *offset]);
        }
        self.ty(name, kind, members.len() as u32, kind_flag, size, &extra);
    }

    fn build(&self) -> Vec<u8> {
        let mut blob = Vec::new();
        blob.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        let (type_len, str_len) = (self.types.len() as u32, self.strings.len() as u32);
        for word in [24, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&self.types);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

const STRUCT: u32 = 4;
const UNION: u32 = 5;

/// Every kind appears once, and the structs that matter come after the kinds with trailing
/// data, so a wrong skip shows up as a wrong offset or a parse error.
fn synthetic() -> Vec<u8> {
    let mut b = Builder::new();
    b.ty("int", 1, 0, false, 4, &[32]); // 1 INT
    b.ty("", 2, 0, false, 1, &[]); // 2 PTR → int
    b.ty("", 3, 0, false, 0, &[1, 1, 16]); // 3 ARRAY int[16]
    b.ty("e", 6, 2, false, 4, &[0, 0, 0, 1]); // 4 ENUM, 2 values
    b.ty("fwd", 7, 0, false, 0, &[]); // 5 FWD
    b.ty("", 9, 0, false, 1, &[]); // 6 VOLATILE int
    b.ty("", 11, 0, false, 2, &[]); // 7 RESTRICT
    b.ty("", 13, 2, false, 1, &[0, 1, 0, 1]); // 8 FUNC_PROTO, 2 params
    b.ty("f", 12, 0, false, 8, &[]); // 9 FUNC
    b.ty("v", 14, 0, false, 1, &[1]); // 10 VAR
    b.ty(".data", 15, 1, false, 4, &[10, 0, 4]); // 11 DATASEC, 1 var
    b.ty("double", 16, 0, false, 8, &[]); // 12 FLOAT
    b.ty("tag", 17, 0, false, 10, &[u32::MAX]); // 13 DECL_TAG
    b.ty("user", 18, 0, false, 2, &[]); // 14 TYPE_TAG
    b.ty("e64", 19, 1, false, 8, &[0, 1, 0]); // 15 ENUM64, 1 value
    b.composite(STRUCT, "inner", 8, false, &[("a", 1, 0), ("b", 1, 32)]); // 16
    b.composite(STRUCT, "", 8, false, &[("deep", 1, 32)]); // 17 anonymous struct
    b.composite(UNION, "", 8, false, &[("x", 1, 0), ("in", 16, 0), ("", 17, 0)]); // 18 anonymous union
    b.ty("", 10, 0, false, 16, &[]); // 19 CONST struct inner
    b.ty("inner_t", 8, 0, false, 19, &[]); // 20 TYPEDEF const struct inner
    b.composite(STRUCT, "outer", 24, false, &[("first", 1, 0), ("", 18, 64), ("td", 20, 128)]); // 21
    let bits = [("lo", 1, 3 << 24), ("hi", 1, (5 << 24) | 3), ("whole", 1, 32)];
    b.composite(STRUCT, "bits", 8, true, &bits); // 22 bitfields (kind_flag)
    b.composite(STRUCT, "loop", 8, false, &[("", 23, 0)]); // 23 contains itself anonymously
    b.build()
}

#[test]
fn btf_synthetic_offsets() {
    let btf = Btf::parse(&synthetic()).expect("synthetic BTF parses");
    let at = |s: &str, m: &str| btf.offset_of(s, m).unwrap_or_else(|e| panic!("{s}.{m}: {e}"));
    assert_eq!(at("outer", "first"), 0);
    assert_eq!(at("outer", "x"), 8, "through the anonymous union");
    assert_eq!(at("outer", "deep"), 12, "through the anonymous union and struct");
    assert_eq!(at("outer", "in.b"), 12, "a dotted path into a named member");
    assert_eq!(at("outer", "td.b"), 20, "through typedef and const");
    assert_eq!(at("bits", "lo"), 0);
    assert_eq!(at("bits", "whole"), 4, "bitfield sizes are masked off with kind_flag");
    assert_eq!(btf.size_of("outer").ok(), Some(24));
}

#[test]
fn btf_errors_name_struct_and_member() {
    let btf = Btf::parse(&synthetic()).expect("synthetic BTF parses");
    let error = |s: &str, m: &str| btf.offset_of(s, m).expect_err("lookup fails").to_string();
    assert_eq!(error("outer", "nope"), r#"kernel BTF: struct outer has no member "nope""#);
    assert_eq!(error("outer", "in.nope"), r#"kernel BTF: struct outer has no member "in.nope""#);
    assert_eq!(error("missing", "x"), "kernel BTF: no struct missing");
    assert_eq!(
        error("outer", "in.a.z"),
        r#"kernel BTF: struct outer has no member "in.a.z": "in.a" is not a struct or union"#
    );
    assert_eq!(
        error("bits", "hi"),
        r#"kernel BTF: struct bits member "hi" is at bit 3, not on a byte boundary"#
    );
    assert!(matches!(btf.offset_of("loop", "x"), Err(LayoutError::Malformed(_))), "a cycle is an error");
    // Anonymous members cannot be named.
    assert!(matches!(btf.offset_of("outer", ""), Err(LayoutError::NoMember { .. })));
}

#[test]
fn btf_pt_regs_per_arch() {
    let mut b = Builder::new();
    b.ty("u64", 1, 0, false, 8, &[64]); // 1
    let x86 = ["r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di", "orig_ax"];
    let members: Vec<(&str, u32, u32)> = x86.iter().enumerate().map(|(i, m)| (*m, 1, 64 * i as u32)).collect();
    b.composite(STRUCT, "pt_regs", 8 * x86.len() as u32, false, &members); // 2
    let regs = pt_regs_x86_64(&Btf::parse(&b.build()).expect("parses")).expect("x86_64 names resolve");
    assert_eq!(regs.args, [14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8]);
    assert_eq!((regs.syscall_nr, regs.exit_arg0), (15 * 8, 14 * 8));

    // arm64: union { struct user_pt_regs user_regs; struct { u64 regs[31]; u64 sp, pc, pstate; }; }
    let mut b = Builder::new();
    b.ty("u64", 1, 0, false, 8, &[64]); // 1
    b.ty("int", 1, 0, false, 4, &[32]); // 2
    b.ty("", 3, 0, false, 0, &[1, 2, 31]); // 3 u64[31]
    b.composite(STRUCT, "", 272, false, &[("regs", 3, 0), ("sp", 1, 31 * 64)]); // 4
    b.composite(UNION, "", 272, false, &[("", 4, 0)]); // 5
    b.composite(STRUCT, "pt_regs", 336, false, &[("", 5, 0), ("orig_x0", 1, 272 * 8), ("syscallno", 2, 280 * 8)]);
    let regs = pt_regs_aarch64(&Btf::parse(&b.build()).expect("parses")).expect("arm64 names resolve");
    assert_eq!(regs.args, [0, 8, 16, 24, 32, 40]);
    assert_eq!((regs.syscall_nr, regs.exit_arg0), (280, 272));
}

#[test]
fn btf_truncated_or_garbage_input_is_an_error_not_a_panic() {
    let blob = synthetic();
    for len in 0..blob.len() {
        assert!(Btf::parse(&blob[..len]).is_err(), "truncated to {len} bytes");
    }
    // Flip each byte in turn: parsing and looking up may fail, but must not panic or hang.
    for position in 0..blob.len() {
        for flip in [0xff, 0x80, 0x01] {
            let mut bad = blob.clone();
            bad[position] ^= flip;
            if let Ok(btf) = Btf::parse(&bad) {
                for (s, m) in [("outer", "td.b"), ("outer", "deep"), ("bits", "whole"), ("loop", "x")] {
                    let _ = btf.offset_of(s, m);
                    let _ = btf.size_of(s);
                }
            }
        }
    }
    assert!(Btf::parse(b"not BTF at all, just some text").is_err());
}

#[test]
fn btf_fanned_out_anonymous_members_end_in_an_error() {
    // 30 structs, each with two anonymous members of the next: 2^30 paths to search.
    let mut b = Builder::new();
    b.ty("int", 1, 0, false, 4, &[32]); // 1
    for id in 2..32 {
        let name = if id == 2 { "fan" } else { "" };
        b.composite(STRUCT, name, 4, false, &[("", id + 1, 0), ("", id + 1, 0)]);
    }
    b.composite(STRUCT, "", 4, false, &[("leaf", 1, 0)]); // 32
    let btf = Btf::parse(&b.build()).expect("parses");
    assert_eq!(btf.offset_of("fan", "leaf").ok(), Some(0));
    assert!(matches!(btf.offset_of("fan", "missing"), Err(LayoutError::Malformed(_))));
}

#[test]
fn btf_real_kernel_fills_the_whole_layout() {
    if !Path::new(BTF_PATH).exists() {
        eprintln!("skipped: {BTF_PATH} is absent (kernel built without CONFIG_DEBUG_INFO_BTF)");
        return;
    }
    let layout = load().unwrap_or_else(|e| panic!("{e}"));
    // Destructured field by field, so a new KernelLayout field must be checked here too.
    let KernelLayout {
        filled, regs_arg, regs_syscall_nr, regs_exit_arg0, task_tgid, task_real_parent, task_files, task_mm,
        task_nsproxy, task_cgroups, task_comm, css_set_dfl_cgrp, cgroup_kn, kernfs_node_id, files_fdt,
        fdtable_max_fds, fdtable_fd, file_inode, file_path, file_flags, file_mode, file_private_data, path_mnt,
        path_dentry, dentry_name, dentry_parent, dentry_inode, qstr_name, inode_ino, inode_sb, inode_mode, sb_dev,
        sb_magic, mm_exe_file, nsproxy_uts, nsproxy_ipc, nsproxy_mnt, nsproxy_pid, nsproxy_net, nsproxy_cgroup,
        uts_ns_inum, ipc_ns_inum, mnt_ns_inum, pid_ns_inum, net_ns_inum, cgroup_ns_inum, socket_sk, sock_family,
        unix_sock_peer, unix_sock_path,
    } = layout;
    assert_eq!(filled, 1);
    let offsets = [
        regs_syscall_nr, regs_exit_arg0, task_tgid, task_real_parent, task_files, task_mm, task_nsproxy,
        task_cgroups, task_comm, css_set_dfl_cgrp, cgroup_kn, kernfs_node_id, files_fdt, fdtable_max_fds,
        fdtable_fd, file_inode, file_path, file_flags, file_mode, file_private_data, path_mnt, path_dentry,
        dentry_name, dentry_parent, dentry_inode, qstr_name, inode_ino, inode_sb, inode_mode, sb_dev, sb_magic,
        mm_exe_file, nsproxy_uts, nsproxy_ipc, nsproxy_mnt, nsproxy_pid, nsproxy_net, nsproxy_cgroup, uts_ns_inum,
        ipc_ns_inum, mnt_ns_inum, pid_ns_inum, net_ns_inum, cgroup_ns_inum, socket_sk, sock_family,
        unix_sock_peer, unix_sock_path,
    ];
    for offset in offsets.iter().chain(&regs_arg) {
        assert!(*offset < 16384, "offset {offset} is implausibly large: {layout:?}");
    }
    assert_ne!(file_inode, file_path);
    assert_ne!(task_files, task_mm);
    assert_eq!(path_dentry, 8, "struct path is {{ vfsmount *mnt; dentry *dentry; }}");
    let bytes = std::fs::read(BTF_PATH).expect("BTF readable");
    let btf = Btf::parse(&bytes).expect("BTF parses");
    let size = |s: &str| btf.size_of(s).unwrap_or_else(|e| panic!("{e}"));
    assert!((1024..16384).contains(&size("task_struct")), "task_struct is {} bytes", size("task_struct"));
    assert!(task_files < size("task_struct") && file_private_data < size("file"));
    assert_eq!(size("path"), 16);
    assert_eq!(kernel_layout(&btf).ok(), Some(layout), "load() and kernel_layout() agree");
    // Hooks every 6.x kernel has: file_open(file) → the verdict is argument 1; sb_mount has 5.
    assert_eq!(super::lsm_hook_params(&btf, "file_open"), Some(1));
    assert_eq!(super::lsm_hook_params(&btf, "sb_mount"), Some(5));
    assert_eq!(super::lsm_hook_params(&btf, "no_such_hook"), None);
    eprintln!("{layout:#?}");
}
