//! Attaching a program to a tracepoint (`syscalls/sys_enter_openat`) by its id, without
//! depending on where (or whether) tracefs is mounted.
//!
//! Tracepoint ids are only published in tracefs. Nodes often have it unmounted, and aya only
//! looks at `/sys/kernel/tracing` and `/sys/kernel/debug/tracing`; so the agent uses any
//! tracefs mount it finds, or mounts tracefs at a private directory just long enough to read
//! the ids. The attachment itself is a perf event of type `PERF_TYPE_TRACEPOINT` carrying the
//! program (`PERF_EVENT_IOC_SET_BPF`); closing the event detaches it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)`; `libc::Ioctl` because the request is a c_ulong
/// in glibc and a c_int in musl (the static build of `cargo xtask image`).
const PERF_EVENT_IOC_SET_BPF: libc::Ioctl = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
/// `sizeof(struct perf_event_attr)` of PERF_ATTR_SIZE_VER5; older kernels accept it.
const PERF_ATTR_SIZE: usize = 112;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Tracepoint ids (`events/<category>/<name>/id`) for the names asked, read once.
pub fn ids(category: &str, names: &[&str], private_dir: &Path) -> Result<BTreeMap<String, u64>, String> {
    if let Some(root) = mounted_tracefs() {
        return Ok(read_ids(&root, category, names));
    }
    std::fs::create_dir_all(private_dir).map_err(|e| format!("creating {}: {e}", private_dir.display()))?;
    let target = CString::new(private_dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let mounted = unsafe {
        libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, std::ptr::null())
    };
    if mounted != 0 {
        let error = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(private_dir);
        return Err(format!("tracefs is not mounted and mounting it at {} failed: {error}", private_dir.display()));
    }
    let found = read_ids(private_dir, category, names);
    // SAFETY: the directory just mounted; a lazy detach cannot fail on a busy mount.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(private_dir);
    Ok(found)
}

/// A tracefs mount point of this mount namespace, from mountinfo.
fn mounted_tracefs() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "tracefs").then(|| PathBuf::from(mount_point))
    })
}

fn read_ids(root: &Path, category: &str, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(root.join("events").join(category).join(name).join("id")).ok()?;
            Some((name.to_string(), text.trim().parse().ok()?))
        })
        .collect()
}

/// Attaches `program` to tracepoint `id`; the returned event keeps it attached.
pub fn attach(program: impl AsFd, id: u64) -> Result<OwnedFd, String> {
    let mut attr = [0u8; PERF_ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    // sample_period (16..24) 1, wakeup_events (48..52) 1: what a tracepoint event wants.
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    attr[48..52].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: perf_event_open with a properly sized attribute; pid -1 cpu 0 is one event
    // whose BPF program runs for every task on every CPU (tracepoint programs are per event
    // type, not per CPU).
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1i32, 0i32, -1i32, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("perf_event_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor owned from here on.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ioctls on the event just opened with the program's descriptor.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, program.as_fd().as_raw_fd()) } != 0 {
        return Err(format!("PERF_EVENT_IOC_SET_BPF: {}", std::io::Error::last_os_error()));
    }
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } != 0 {
        return Err(format!("PERF_EVENT_IOC_ENABLE: {}", std::io::Error::last_os_error()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    #[test]
    fn syscall_tracepoint_ids_are_found_with_or_without_a_tracefs_mount() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to mount tracefs");
            return;
        }
        let dir = std::env::temp_dir().join(format!("moat-tracefs-test-{}", std::process::id()));
        let ids = super::ids("syscalls", &["sys_enter_openat", "sys_exit_openat", "sys_enter_no_such_call"], &dir).expect("ids");
        assert!(ids.contains_key("sys_enter_openat") && ids.contains_key("sys_exit_openat"), "{ids:?}");
        assert!(!ids.contains_key("sys_enter_no_such_call"));
        assert_ne!(ids["sys_enter_openat"], ids["sys_exit_openat"]);
        assert!(!dir.exists(), "the private mount point is removed");
    }
}
