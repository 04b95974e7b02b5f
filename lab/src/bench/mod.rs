//! Hidden benchmark subcommands, driven by `cargo xtask bench`: each prints one JSON object.
//!
//! * `moat-lab __bench-datapath`: per-packet cost of the verdict programs under BPF_PROG_TEST_RUN,
//!   against a program that only returns 1, with the state of a synthetic cluster.
//! * `moat-lab __bench-compile`: time and memory to compile a synthetic cluster.
//! * `moat-lab __bench-prog-stats -- CMD`: each moat program's runs and run time while CMD runs.

pub mod compile;
pub mod datapath;
pub mod harness;
pub mod prog_stats;
pub mod synth;
pub mod testrun;

use moat_agent::compiler::CompileError;
use moat_agent::kernel::KernelError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Synth(#[from] synth::SynthError),
    #[error("compiling the synthetic cluster: {0}")]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("program {program}: {message}")]
    Program { program: &'static str, message: String },
    #[error("BPF_PROG_TEST_RUN on {program}: {source}")]
    TestRun { program: &'static str, source: std::io::Error },
    #[error("{program} returned {retval} for the {case} packet (expected {expected}): {hint}")]
    Verdict { program: &'static str, case: &'static str, retval: u32, expected: u32, hint: &'static str },
    #[error("{0}")]
    Setup(String),
}

/// Peak resident set size of this process, in KiB (VmHWM), if /proc says.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Median of `values` (upper median for an even count); None if empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().checked_sub(1)? / 2).copied()
}
