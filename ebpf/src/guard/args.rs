//! Where a probe finds its arguments.
//!
//! * BTF-typed tracing contexts (BPF LSM, fentry, fexit) hand the traced function's
//!   arguments over as an array of u64. The verifier only accepts constant offsets into it,
//!   so the index is a const parameter: a computed index is rejected ("dereference of
//!   modified ctx ptr") on every kernel.
//! * A system call's own arguments come either from its tracepoint record
//!   (`syscalls/sys_enter_*`: after the common header and the syscall number, six u64) or,
//!   for an fentry/fexit program at the syscall's entry function (`__x64_sys_*`), from the
//!   `struct pt_regs` it is passed.

use aya_ebpf::programs::TracePointContext;
use aya_ebpf::EbpfContext;

use super::kernel;

/// Argument `N` of a BTF-typed tracing context.
#[inline(always)]
pub fn traced<const N: usize>(ctx: &impl EbpfContext) -> u64 {
    let base = ctx.as_ptr() as *const u64;
    // SAFETY: a constant offset into the context the kernel passes; the verifier checks it
    // against the traced function's prototype.
    unsafe { *base.add(N) }
}

/// A system call's arguments.
pub trait SyscallArgs {
    /// Argument `n` (0..6); 0 where unreadable.
    fn arg(&self, n: usize) -> u64;
}

/// `syscalls/sys_enter_*` record: `struct trace_entry` (8 bytes), `int __syscall_nr` (padded
/// to 8), then `unsigned long args[6]`. `sys_exit_*`: the same header, then `long ret`.
pub const TRACEPOINT_ARGS: usize = 16;
pub const TRACEPOINT_RET: usize = 16;

pub struct TracepointArgs<'a>(pub &'a TracePointContext);

impl SyscallArgs for TracepointArgs<'_> {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        let n = if n < 6 { n } else { 5 };
        // SAFETY: a read inside the record, checked by the helper.
        unsafe { self.0.read_at::<u64>(TRACEPOINT_ARGS + 8 * n).unwrap_or(0) }
    }
}

/// The return value in a `syscalls/sys_exit_*` record.
#[inline(always)]
pub fn tracepoint_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: a read inside the record, checked by the helper.
    unsafe { ctx.read_at::<i64>(TRACEPOINT_RET).unwrap_or(-1) }
}

/// The `struct pt_regs *` a syscall entry function (`__x64_sys_setns`) receives.
pub struct RegsArgs(pub usize);

impl RegsArgs {
    #[inline(always)]
    pub fn of(ctx: &impl EbpfContext) -> Self {
        Self(traced::<0>(ctx) as usize)
    }
}

impl SyscallArgs for RegsArgs {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        kernel::read::<u64>(self.0, kernel::regs_arg(n)).unwrap_or(0)
    }
}

/// For `fexit` at a syscall entry function: the return value follows its one argument.
#[inline(always)]
pub fn syscall_fexit_ret(ctx: &impl EbpfContext) -> i64 {
    traced::<1>(ctx) as i64
}

