//! cgroup/connect_unix (Linux 6.7+) for the runtime guard, loaded without aya's loader.
//!
//! aya 0.14 has no `BPF_CGROUP_UNIX_CONNECT` attach type: it parses `moat_connect_unix` as a
//! connect4 program and would load it as one. So this module links the program itself with
//! aya-obj (the crate aya loads with) against the maps aya already created — same
//! relocation code, same map fds — and loads it with one `BPF_PROG_LOAD` carrying the right
//! expected attach type. The program reads maps only (no globals, no CO-RE), which is what
//! makes this small. Attaching and pinning then work like the other cgroup programs'.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use aya::maps::{Map, MapData};
use aya::Ebpf;
use aya_obj::generated::bpf_insn;

use super::btf_layout::{Btf, LayoutError};
use crate::kernel::btf_layout::BTF_PATH;

pub const PROGRAM: &str = "moat_connect_unix";
pub const HOOK: &str = "cgroup/connect_unix";
/// `enum bpf_attach_type` / `enum bpf_prog_type` values from the kernel's uapi.
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_LOAD: libc::c_long = 5;
/// Verifier log kept when a load fails (its tail names the failing instruction).
const LOG_SIZE: usize = 1 << 20;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`; unused bytes must be zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 16],
}

/// `bpf_sock_addr_kern.uaddr` and `.uaddrlen`: where the program finds the address. Missing
/// `uaddrlen` means a kernel before 6.7, which has no connect_unix hook either.
pub fn context_offsets() -> Result<(u32, u32), LayoutError> {
    let bytes = std::fs::read(BTF_PATH).map_err(|source| LayoutError::Read { path: BTF_PATH.into(), source })?;
    let btf = Btf::parse(&bytes)?;
    Ok((btf.offset_of("bpf_sock_addr_kern", "uaddr")?, btf.offset_of("bpf_sock_addr_kern", "uaddrlen")?))
}

/// Links and loads the program. Must run before any map is taken out of `ebpf`: the
/// relocation needs every map the object declares.
pub fn load(object: &[u8], ebpf: &Ebpf) -> Result<OwnedFd, String> {
    let instructions = link(object, ebpf)?;
    let license = CString::new("GPL").map_err(|e| e.to_string())?;
    let try_load = |log: &mut Vec<u8>| {
        let mut name = [0u8; 16];
        let short = &PROGRAM.as_bytes()[..PROGRAM.len().min(15)];
        name[..short.len()].copy_from_slice(short);
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: instructions.len() as u32,
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_UNIX_CONNECT,
            _rest: [0; 16],
        };
        // SAFETY: a zero-padded bpf_attr for BPF_PROG_LOAD whose pointers (instructions,
        // license, log) outlive the call.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &mut attr as *mut ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    match try_load(&mut Vec::new()) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            // Again with the verifier's log, for the reason.
            let mut log = vec![0u8; LOG_SIZE];
            let retried = try_load(&mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
            drop(retried);
            Err(format!("BPF_PROG_LOAD: {error}{}", if tail.is_empty() { String::new() } else { format!("; verifier: {}", tail.join(" | ")) }))
        }
    }
}

/// The program's instructions with map references and calls resolved, exactly as aya's own
/// loader resolves them for the programs it loads.
fn link(object: &[u8], ebpf: &Ebpf) -> Result<Vec<bpf_insn>, String> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("parsing the object: {e}"))?;
    let mut fds = Vec::new();
    for (name, definition) in &obj.maps {
        let map = ebpf.map(name).ok_or_else(|| format!("map {name} is not loaded"))?;
        fds.push((name.clone(), map_data(map).fd().as_fd().as_raw_fd(), definition.clone()));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(fds.iter().map(|(name, fd, definition)| (name.as_str(), *fd, definition)), &text_sections)
        .map_err(|e| format!("relocating maps: {}", super::error_chain(&e)))?;
    obj.relocate_calls(&text_sections).map_err(|e| format!("relocating calls: {}", super::error_chain(&e)))?;
    let program = obj.programs.get(PROGRAM).ok_or("missing from the object")?;
    let function = obj.functions.get(&program.function_key()).ok_or("its function is missing from the object")?;
    Ok(function.instructions.clone())
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::ArrayOfMaps(data)
        | Map::BloomFilter(data)
        | Map::CgroupArray(data)
        | Map::CgroupStorage(data)
        | Map::CgrpStorage(data)
        | Map::CpuMap(data)
        | Map::DevMap(data)
        | Map::DevMapHash(data)
        | Map::HashMap(data)
        | Map::HashOfMaps(data)
        | Map::InodeStorage(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuCgroupStorage(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data)
        | Map::Queue(data)
        | Map::ReusePortSockArray(data)
        | Map::RingBuf(data)
        | Map::SockHash(data)
        | Map::SockMap(data)
        | Map::SkStorage(data)
        | Map::Stack(data)
        | Map::StackTraceMap(data)
        | Map::Unsupported(data)
        | Map::XskMap(data) => data,
    }
}

/// Attaches the loaded program to `cgroup` through a link pinned at `pin`.
pub fn attach(program: &OwnedFd, cgroup: &Path, pin: &Path) -> Result<(), String> {
    let dir = std::fs::File::open(cgroup).map_err(|e| format!("opening {}: {e}", cgroup.display()))?;
    super::cgroup_link::attach_pinned(program.as_fd(), dir.as_fd(), BPF_CGROUP_UNIX_CONNECT, pin)
        .map_err(|e| format!("attach to {}: {e}", cgroup.display()))
}
