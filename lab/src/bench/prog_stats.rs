//! `moat-lab __bench-prog-stats -- CMD...`: what each loaded BPF program costs while CMD
//! runs, by the kernel's own accounting (`BPF_ENABLE_STATS` run time): per program, how often
//! it ran and for how long. The accounting is on only while this process holds its fd, so
//! the timed loops the bench reports otherwise never pay for it (two clock reads per run).
//! Prints one JSON object; CMD's own output goes to stderr.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use serde_json::json;

use super::BenchError;

#[derive(clap::Args, Debug)]
pub struct ProgStatsArgs {
    /// Only programs whose name starts with this.
    #[arg(long, default_value = "moat_")]
    pub prefix: String,
    /// The command to run with the accounting on.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

/// A program's counters: name, runs, nanoseconds.
type Counters = BTreeMap<u32, (String, u64, u64)>;

pub fn run(args: ProgStatsArgs) -> Result<(), BenchError> {
    let _accounting = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| BenchError::Setup(format!("BPF_ENABLE_STATS (run time): {e}")))?;
    let before = counters(&args.prefix)?;
    let (program, rest) = args.command.split_first().ok_or_else(|| BenchError::Setup("no command".into()))?;
    let status = Command::new(program)
        .args(rest)
        .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| BenchError::Setup(e.to_string()))?))
        .status()
        .map_err(|e| BenchError::Setup(format!("running {program}: {e}")))?;
    let after = counters(&args.prefix)?;
    let programs: Vec<_> = after
        .iter()
        .filter_map(|(id, (name, runs, ns))| {
            let (_, runs_before, ns_before) = before.get(id).cloned().unwrap_or_default();
            let runs = runs.saturating_sub(runs_before);
            (runs > 0).then(|| json!({"id": id, "name": name, "runs": runs, "run_time_ns": ns.saturating_sub(ns_before)}))
        })
        .collect();
    println!("{}", json!({"programs": programs, "exit_code": status.code()}));
    if !status.success() {
        return Err(BenchError::Setup(format!("{program} exited with {status}")));
    }
    Ok(())
}

/// Every loaded program named with `prefix`, with its counters from fdinfo.
fn counters(prefix: &str) -> Result<Counters, BenchError> {
    let mut out = Counters::new();
    for info in aya::programs::loaded_programs() {
        // A program unloaded between listing and reading is simply not counted.
        let Ok(info) = info else { continue };
        let Some(name) = info.name_as_str().filter(|name| name.starts_with(prefix)) else { continue };
        let Ok(fd) = info.fd() else { continue };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Setup(format!("{path}: {e}")))?;
        let field = |key: &str| -> u64 {
            text.lines().find_map(|line| line.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0)
        };
        out.insert(info.id(), (name.to_string(), field("run_cnt:"), field("run_time_ns:")));
    }
    Ok(out)
}
