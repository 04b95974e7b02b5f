//! The system calls detection records name (`SYSCALL_*` in `GuardEvent::owner`).

use moat_common::guard as g;

/// A syscall's name for events: a `SYSCALL_*` class, or (with `SYSCALL_NUMBER`) this
/// architecture's syscall number.
pub fn class_name(class: u64) -> &'static str {
    if class & g::SYSCALL_NUMBER != 0 {
        return number_name((class & !g::SYSCALL_NUMBER) as i64);
    }
    match class as u32 {
        g::SYSCALL_MOUNT => "mount",
        g::SYSCALL_FSOPEN => "fsopen",
        g::SYSCALL_MKNOD => "mknod",
        g::SYSCALL_MKNODAT => "mknodat",
        g::SYSCALL_UNSHARE => "unshare",
        g::SYSCALL_INIT_MODULE => "init_module",
        g::SYSCALL_FINIT_MODULE => "finit_module",
        g::SYSCALL_BPF => "bpf",
        g::SYSCALL_PERF_EVENT_OPEN => "perf_event_open",
        g::SYSCALL_PTRACE => "ptrace",
        g::SYSCALL_PROCESS_VM_WRITEV => "process_vm_writev",
        _ => "syscall",
    }
}

/// The calls a security hook may see a syscall number of.
fn number_name(nr: i64) -> &'static str {
    let known: &[(i64, &'static str)] = &[
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_openat2, "openat2"),
        (libc::SYS_pidfd_getfd, "pidfd_getfd"),
        (libc::SYS_kcmp, "kcmp"),
        (libc::SYS_setns, "setns"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_open, "open"),
    ];
    known.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name).unwrap_or("syscall")
}

#[cfg(test)]
mod tests {
    #[test]
    fn security_hook_records_name_the_callers_syscall() {
        let name = |nr: i64| super::class_name(moat_common::guard::SYSCALL_NUMBER | nr as u64);
        assert_eq!(name(libc::SYS_process_vm_writev), "process_vm_writev");
        assert_eq!(name(libc::SYS_openat), "openat");
        assert_eq!(name(100_000), "syscall");
        assert_eq!(super::class_name(u64::from(moat_common::guard::SYSCALL_FSOPEN)), "fsopen");
    }
}
