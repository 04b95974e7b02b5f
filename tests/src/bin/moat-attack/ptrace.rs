//! Techniques on another process: ptrace attach and process_vm_writev.

use std::io;
use std::time::{Duration, Instant};

use crate::report::Report;

/// How long to wait for the seized process to stop before leaving the detach to our exit.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// `ptrace-attach PID`: PTRACE_SEIZE (the tracee keeps running), then PTRACE_INTERRUPT, wait
/// for the stop and PTRACE_DETACH. Should the stop not come, our exit detaches (the kernel
/// unlinks every tracee of an exiting tracer).
pub fn attach(pid: i32) -> Report {
    const T: &str = "ptrace-attach";
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: plain ptrace requests with null addr/data.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) };
    if seized < 0 {
        return Report::failed(T, &io::Error::last_os_error(), format!("PTRACE_SEIZE {pid}"));
    }
    let detached = interrupt_and_detach(pid);
    Report::done(T, format!("PTRACE_SEIZE {pid}; {detached}"))
}

fn interrupt_and_detach(pid: i32) -> &'static str {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: as above; the tracee is ours after the seize.
    if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null) } < 0 {
        return "interrupt failed, detached on exit";
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let mut status = 0;
        // SAFETY: waits only for this tracee, without blocking.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if waited == pid {
            break;
        }
        if waited < 0 || Instant::now() >= deadline {
            return "no stop seen, detached on exit";
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the tracee is in a ptrace stop; data 0 resumes it without a signal.
    if unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, null, null) } < 0 {
        return "detach failed, detached on exit";
    }
    "detached"
}

/// `process-vm-writev PID ADDR`: one byte to ADDR in PID. The kernel checks ptrace access
/// first (what BPF LSM refuses), then writes; ADDR should be unmapped in the target (below
/// `vm.mmap_min_addr`, like 0x1000), so the write fails with EFAULT and nothing changes.
pub fn process_vm_writev(pid: i32, addr: u64) -> Report {
    let mut byte = 0u8;
    let local = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: 1 };
    // SAFETY: the local iovec is our own byte; the remote one is in the other process.
    let ret = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    Report::from_ret("process-vm-writev", ret as i64, format!("1 byte to {addr:#x} in {pid}"))
}
