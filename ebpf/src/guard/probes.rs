//! The runtime guard's detection programs. The agent attaches, per probe, the best kind the
//! kernel runs (see `agent/src/kernel/guard_probes.rs`):
//!
//! 1. BPF LSM (`moat_lsm_*`): refuses in block mode;
//! 2. fentry at the hook's `security_*` function (`moat_fentry_*`): the same view, reports;
//! 3. the system calls' own tracepoints (`moat_tp_*`), where the kernel has no trampolines.
//!
//! Where no security hook exists (fsopen, mknod, setns, the result of a connect), fentry and
//! fexit at the syscall's entry function (`moat_sys_*`) stand in for the tracepoints.
//! Nothing runs on system calls no detection watches.

use aya_ebpf::macros::{fentry, fexit, lsm, raw_tracepoint, tracepoint};
use aya_ebpf::programs::{FEntryContext, FExitContext, LsmContext, RawTracePointContext, TracePointContext};
use moat_common::guard as g;

use super::args::{syscall_fexit_ret, tracepoint_ret, traced, RegsArgs, TracepointArgs};
use super::security::{self, Gate};
use super::{kernel, syscalls};

// ---------------------------------------------------------------------------------------
// BPF LSM. Each program first honours the verdict of BPF LSM programs before it: the
// argument after the hook's own (its index is the hook's parameter count, constant per
// program; the agent checks it against the kernel's BTF before loading).

macro_rules! previous {
    ($ctx:expr, $args:literal) => {{
        let before = traced::<$args>(&$ctx) as i32;
        if before != 0 {
            return before;
        }
    }};
}

#[lsm(hook = "file_open")]
pub fn moat_lsm_file_open(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    security::file_open(traced::<0>(&ctx), Gate::Refuse)
}

#[lsm(hook = "sb_mount")]
pub fn moat_lsm_sb_mount(ctx: LsmContext) -> i32 {
    previous!(ctx, 5);
    security::sb_mount(traced::<0>(&ctx), traced::<1>(&ctx), traced::<2>(&ctx), traced::<3>(&ctx), Gate::Refuse)
}

#[lsm(hook = "ptrace_access_check")]
pub fn moat_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    previous!(ctx, 2);
    security::ptrace_access_check(traced::<0>(&ctx), traced::<1>(&ctx), Gate::Refuse)
}

/// `bpf(cmd, attr, size)` up to Linux 6.15.
#[lsm(hook = "bpf")]
pub fn moat_lsm_bpf(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    security::bpf(traced::<0>(&ctx), Gate::Refuse)
}

/// `bpf(cmd, attr, size, kernel)` from Linux 6.16.
#[lsm(hook = "bpf")]
pub fn moat_lsm_bpf4(ctx: LsmContext) -> i32 {
    previous!(ctx, 4);
    security::bpf(traced::<0>(&ctx), Gate::Refuse)
}

#[lsm(hook = "kernel_read_file")]
pub fn moat_lsm_kernel_read_file(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    security::kernel_read_file(traced::<1>(&ctx), Gate::Refuse)
}

#[lsm(hook = "kernel_load_data")]
pub fn moat_lsm_kernel_load_data(ctx: LsmContext) -> i32 {
    previous!(ctx, 2);
    security::kernel_load_data(traced::<0>(&ctx), Gate::Refuse)
}

#[lsm(hook = "userns_create")]
pub fn moat_lsm_userns_create(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    security::userns_create(Gate::Refuse)
}

#[lsm(hook = "unix_stream_connect")]
pub fn moat_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    security::unix_stream_connect(traced::<1>(&ctx), Gate::Refuse)
}

/// `perf_event_open(attr, type)` (Linux 6.1–6.x).
#[lsm(hook = "perf_event_open")]
pub fn moat_lsm_perf_event_open(ctx: LsmContext) -> i32 {
    previous!(ctx, 2);
    security::perf_event_open(Gate::Refuse)
}

/// `perf_event_open(event)` (later kernels).
#[lsm(hook = "perf_event_open")]
pub fn moat_lsm_perf_event_open1(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    security::perf_event_open(Gate::Refuse)
}

#[lsm(hook = "socket_connect")]
pub fn moat_lsm_socket_connect(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    security::socket_connect(traced::<1>(&ctx), Gate::Refuse)
}

// ---------------------------------------------------------------------------------------
// fentry at the security functions: trampolines, but no active BPF LSM.

#[fentry(function = "security_file_open")]
pub fn moat_fentry_file_open(ctx: FEntryContext) -> i32 {
    security::file_open(traced::<0>(&ctx), Gate::Observe)
}

#[fentry(function = "security_sb_mount")]
pub fn moat_fentry_sb_mount(ctx: FEntryContext) -> i32 {
    security::sb_mount(traced::<0>(&ctx), traced::<1>(&ctx), traced::<2>(&ctx), traced::<3>(&ctx), Gate::Observe)
}

#[fentry(function = "security_ptrace_access_check")]
pub fn moat_fentry_ptrace_access_check(ctx: FEntryContext) -> i32 {
    security::ptrace_access_check(traced::<0>(&ctx), traced::<1>(&ctx), Gate::Observe)
}

#[fentry(function = "security_bpf")]
pub fn moat_fentry_bpf(ctx: FEntryContext) -> i32 {
    security::bpf(traced::<0>(&ctx), Gate::Observe)
}

#[fentry(function = "security_kernel_read_file")]
pub fn moat_fentry_kernel_read_file(ctx: FEntryContext) -> i32 {
    security::kernel_read_file(traced::<1>(&ctx), Gate::Observe)
}

#[fentry(function = "security_kernel_load_data")]
pub fn moat_fentry_kernel_load_data(ctx: FEntryContext) -> i32 {
    security::kernel_load_data(traced::<0>(&ctx), Gate::Observe)
}

#[fentry(function = "security_create_user_ns")]
pub fn moat_fentry_userns_create(_ctx: FEntryContext) -> i32 {
    security::userns_create(Gate::Observe)
}

#[fentry(function = "security_unix_stream_connect")]
pub fn moat_fentry_unix_stream_connect(ctx: FEntryContext) -> i32 {
    security::unix_stream_connect(traced::<1>(&ctx), Gate::Observe)
}

#[fentry(function = "security_perf_event_open")]
pub fn moat_fentry_perf_event_open(_ctx: FEntryContext) -> i32 {
    security::perf_event_open(Gate::Observe)
}

#[fentry(function = "security_socket_connect")]
pub fn moat_fentry_socket_connect(ctx: FEntryContext) -> i32 {
    security::socket_connect(traced::<1>(&ctx), Gate::Observe)
}

// ---------------------------------------------------------------------------------------
// fentry/fexit at syscall entry functions (`__x64_sys_*`; the agent names its architecture's),
// for what no security hook sees.

#[fentry(function = "__x64_sys_fsopen")]
pub fn moat_sys_fsopen(ctx: FEntryContext) -> i32 {
    syscalls::mount(&RegsArgs::of(&ctx), true);
    0
}

#[fentry(function = "__x64_sys_mknod")]
pub fn moat_sys_mknod(ctx: FEntryContext) -> i32 {
    syscalls::mknod(&RegsArgs::of(&ctx), false);
    0
}

#[fentry(function = "__x64_sys_mknodat")]
pub fn moat_sys_mknodat(ctx: FEntryContext) -> i32 {
    syscalls::mknod(&RegsArgs::of(&ctx), true);
    0
}

#[fentry(function = "__x64_sys_setns")]
pub fn moat_sys_setns_enter(ctx: FEntryContext) -> i32 {
    syscalls::setns_enter(&RegsArgs::of(&ctx));
    0
}

#[fexit(function = "__x64_sys_setns")]
pub fn moat_sys_setns_exit(ctx: FExitContext) -> i32 {
    syscalls::setns_exit(syscall_fexit_ret(&ctx));
    0
}

/// Reports cgroup/connect_unix refusals (the runtime socket's kill path is
/// `moat_fentry_unix_stream_connect` on these kernels).
#[fexit(function = "__x64_sys_connect")]
pub fn moat_sys_connect_exit(ctx: FExitContext) -> i32 {
    syscalls::connect_exit(None, syscall_fexit_ret(&ctx));
    0
}

// ---------------------------------------------------------------------------------------
// The system calls' tracepoints: kernels without trampolines.

macro_rules! exit_open {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            syscalls::open_exit(tracepoint_ret(&ctx));
            0
        }
    };
}
exit_open!(moat_tp_open);
exit_open!(moat_tp_openat);
exit_open!(moat_tp_openat2);
exit_open!(moat_tp_creat);

#[tracepoint]
pub fn moat_tp_mount(ctx: TracePointContext) -> u32 {
    syscalls::mount(&TracepointArgs(&ctx), false);
    0
}

#[tracepoint]
pub fn moat_tp_fsopen(ctx: TracePointContext) -> u32 {
    syscalls::mount(&TracepointArgs(&ctx), true);
    0
}

#[tracepoint]
pub fn moat_tp_mknod(ctx: TracePointContext) -> u32 {
    syscalls::mknod(&TracepointArgs(&ctx), false);
    0
}

#[tracepoint]
pub fn moat_tp_mknodat(ctx: TracePointContext) -> u32 {
    syscalls::mknod(&TracepointArgs(&ctx), true);
    0
}

#[tracepoint]
pub fn moat_tp_unshare(ctx: TracePointContext) -> u32 {
    syscalls::unshare(&TracepointArgs(&ctx));
    0
}

macro_rules! enter_kernel_code {
    ($name:ident, $call:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            syscalls::kernel_code(&TracepointArgs(&ctx), $call);
            0
        }
    };
}
enter_kernel_code!(moat_tp_init_module, g::SYSCALL_INIT_MODULE);
enter_kernel_code!(moat_tp_finit_module, g::SYSCALL_FINIT_MODULE);
enter_kernel_code!(moat_tp_bpf, g::SYSCALL_BPF);
enter_kernel_code!(moat_tp_perf_event_open, g::SYSCALL_PERF_EVENT_OPEN);

#[tracepoint]
pub fn moat_tp_ptrace(ctx: TracePointContext) -> u32 {
    syscalls::ptrace(&TracepointArgs(&ctx));
    0
}

#[tracepoint]
pub fn moat_tp_process_vm_writev(ctx: TracePointContext) -> u32 {
    syscalls::process_vm_writev(&TracepointArgs(&ctx));
    0
}

#[tracepoint]
pub fn moat_tp_setns_enter(ctx: TracePointContext) -> u32 {
    syscalls::setns_enter(&TracepointArgs(&ctx));
    0
}

#[tracepoint]
pub fn moat_tp_setns_exit(ctx: TracePointContext) -> u32 {
    syscalls::setns_exit(tracepoint_ret(&ctx));
    0
}

#[tracepoint]
pub fn moat_tp_connect_enter(ctx: TracePointContext) -> u32 {
    syscalls::connect_enter(&TracepointArgs(&ctx));
    0
}

#[tracepoint]
pub fn moat_tp_connect_exit(ctx: TracePointContext) -> u32 {
    syscalls::connect_exit(Some(kernel::current_syscall_exit_arg0()), tracepoint_ret(&ctx));
    0
}

// ---------------------------------------------------------------------------------------

/// Children inherit the kubelet-credential taint (every kernel).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn moat_sched_fork(ctx: RawTracePointContext) -> i32 {
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    syscalls::fork(parent as usize, child as usize);
    0
}
