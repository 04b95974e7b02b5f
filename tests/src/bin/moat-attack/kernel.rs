//! Kernel-extension techniques: module loading, bpf(2), perf_event_open(2). None of them
//! leaves anything behind: the module images are refused by the kernel's ELF check, the map
//! and the perf event are closed at once.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::report::Report;
use crate::Usage;

/// Not an ELF file, so the kernel can only refuse it (ENOEXEC), after the permission checks.
const BOGUS_MODULE: &[u8; 64] = b"moat-attack: this is not a kernel module, only a test image.\0\0\0\0";

/// `init-module`.
pub fn init_module() -> Report {
    let params = c"";
    // SAFETY: image and params are valid for the call; the kernel only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_init_module, BOGUS_MODULE.as_ptr(), BOGUS_MODULE.len(), params.as_ptr()) };
    Report::from_ret("init-module", ret, format!("init_module of a {}-byte non-ELF image", BOGUS_MODULE.len()))
}

/// `finit-module PATH`: refuses (usage error) a file that starts like an ELF object, so it
/// can never load a real module. Flags are 0, so a compressed module is not decompressed
/// either.
pub fn finit_module(path: &Path) -> Result<Report, Usage> {
    const T: &str = "finit-module";
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return Ok(Report::failed(T, &error, format!("opening {}", path.display()))),
    };
    let mut magic = [0u8; 4];
    let mut head = (&mut file).take(4);
    if let Err(error) = head.read_exact(&mut magic) {
        if error.kind() != io::ErrorKind::UnexpectedEof {
            return Ok(Report::failed(T, &error, format!("reading {}", path.display())));
        }
    }
    if &magic == b"\x7fELF" {
        return Err(Usage(format!("{} is an ELF file: it could be a module, and would be loaded", path.display())));
    }
    let params = c"";
    // SAFETY: fd and params are valid; the kernel reads the file from the start itself.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    Ok(Report::from_ret(T, ret, format!("finit_module({})", path.display())))
}

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel zero-fills the rest.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `bpf`: a one-entry array map, closed at once.
pub fn bpf() -> Report {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut map_name = [0u8; 16];
    map_name[..11].copy_from_slice(b"moat_attack");
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    let size = std::mem::size_of::<MapCreate>();
    // SAFETY: attr is a valid prefix of bpf_attr of `size` bytes; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const MapCreate, size) };
    let report = Report::from_ret("bpf", fd, "BPF_MAP_CREATE of a 1-entry array map");
    close(fd);
    report
}

/// `struct perf_event_attr` up to PERF_ATTR_SIZE_VER0 (64 bytes).
#[repr(C)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// `perf-event-open`: a disabled software clock on this process, user space only, closed at
/// once.
pub fn perf_event_open() -> Report {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
    const DISABLED: u64 = 1;
    const EXCLUDE_KERNEL: u64 = 1 << 5;
    const EXCLUDE_HV: u64 = 1 << 6;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_TASK_CLOCK,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV,
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    let (pid, cpu, group): (libc::pid_t, libc::c_int, libc::c_int) = (0, -1, -1);
    // SAFETY: attr is a complete VER0 perf_event_attr; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttr, pid, cpu, group, PERF_FLAG_FD_CLOEXEC) };
    let report = Report::from_ret("perf-event-open", fd, "software task clock on self, disabled");
    close(fd);
    report
}

fn close(fd: libc::c_long) {
    if fd >= 0 {
        // SAFETY: fd was just returned by the kernel to us and is closed once.
        unsafe { libc::close(fd as libc::c_int) };
    }
}
