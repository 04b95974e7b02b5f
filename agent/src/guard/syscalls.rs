//! This architecture's syscall numbers → what the guard programs do with them
//! (`GUARD_SYSCALLS`). The programs are architecture-neutral; only the agent knows numbers.

use moat_common::guard as g;

/// `(syscall number, class)` for every syscall the guard looks at.
pub fn table() -> Vec<(u32, u32)> {
    let mut table = vec![
        (libc::SYS_openat, g::SYSCALL_OPEN),
        (libc::SYS_openat2, g::SYSCALL_OPEN),
        (libc::SYS_open_by_handle_at, g::SYSCALL_OPEN),
        (libc::SYS_connect, g::SYSCALL_CONNECT),
        (libc::SYS_setns, g::SYSCALL_SETNS),
        (libc::SYS_mount, g::SYSCALL_MOUNT),
        (libc::SYS_fsopen, g::SYSCALL_FSOPEN),
        (libc::SYS_mknodat, g::SYSCALL_MKNODAT),
        (libc::SYS_unshare, g::SYSCALL_UNSHARE),
        (libc::SYS_init_module, g::SYSCALL_INIT_MODULE),
        (libc::SYS_finit_module, g::SYSCALL_FINIT_MODULE),
        (libc::SYS_bpf, g::SYSCALL_BPF),
        (libc::SYS_perf_event_open, g::SYSCALL_PERF_EVENT_OPEN),
        (libc::SYS_ptrace, g::SYSCALL_PTRACE),
        (libc::SYS_process_vm_writev, g::SYSCALL_PROCESS_VM_WRITEV),
    ];
    // The legacy calls exist on x86_64 only (arm64 has the *at forms alone).
    #[cfg(target_arch = "x86_64")]
    table.extend([
        (libc::SYS_open, g::SYSCALL_OPEN),
        (libc::SYS_creat, g::SYSCALL_OPEN),
        (libc::SYS_mknod, g::SYSCALL_MKNOD),
    ]);
    table.into_iter().map(|(nr, class)| (nr as u32, class)).collect()
}

/// A syscall's name for events (`GuardEvent::owner` carries the class on sys_enter).
pub fn class_name(class: u64) -> &'static str {
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

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_fit_the_map_and_are_unique() {
        let table = super::table();
        let mut numbers: Vec<_> = table.iter().map(|(nr, _)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), table.len());
        assert!(numbers.iter().all(|nr| *nr < moat_common::guard::capacity::GUARD_SYSCALLS));
    }
}
