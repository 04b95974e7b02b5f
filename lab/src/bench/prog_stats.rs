//! `moat-lab __bench-prog-stats -- CMD...`: what each loaded BPF program costs while CMD
//! runs, by the kernel's own accounting (`BPF_ENABLE_STATS` run time): per program, how often
//! it ran and for how long. The accounting is on only while this process holds its fd, so
//! the timed loops the bench reports otherwise never pay for it (two clock reads per run).
//! Prints one JSON object; CMD's own output goes to stderr. Names are the programs' full
//! function names where `/proc/kallsyms` lists the JIT image (`bpf_prog_<tag>_<name>`): the
//! kernel's own name keeps 15 characters, so `moat_tp_connect_enter` and `_exit` would read
//! alike.

use std::collections::{BTreeMap, HashMap};
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

/// A program's counters: name, whether the kernel cut it short, runs, nanoseconds.
type Counters = BTreeMap<u32, (String, bool, u64, u64)>;

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
        .filter_map(|(id, (name, truncated, runs, ns))| {
            let (_, _, runs_before, ns_before) = before.get(id).cloned().unwrap_or_default();
            let runs = runs.saturating_sub(runs_before);
            (runs > 0).then(|| {
                json!({"id": id, "name": name, "truncated": truncated, "runs": runs, "run_time_ns": ns.saturating_sub(ns_before)})
            })
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
    let jitted = jitted_names();
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
        let tag = text.lines().find_map(|line| line.strip_prefix("prog_tag:")).map(str::trim).unwrap_or_default();
        let (name, truncated) = match full_name(&jitted, tag, name) {
            Some(full) => (full, false),
            None => (name, name.len() >= KERNEL_NAME_CHARS),
        };
        out.insert(info.id(), (name.to_string(), truncated, field("run_cnt:"), field("run_time_ns:")));
    }
    Ok(out)
}

/// A program name as the kernel keeps it (BPF_OBJ_NAME_LEN less the NUL).
const KERNEL_NAME_CHARS: usize = 15;

/// JIT images by program tag → the function names `/proc/kallsyms` gives them. Empty where
/// the file is unreadable or `net.core.bpf_jit_kallsyms` is off: names stay the kernel's.
fn jitted_names() -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else { return out };
    for line in text.lines().filter(|line| line.ends_with("[bpf]")) {
        let Some(symbol) = line.split_whitespace().nth(2) else { continue };
        let Some((tag, name)) = symbol.strip_prefix("bpf_prog_").and_then(|rest| rest.split_once('_')) else { continue };
        out.entry(tag.to_string()).or_default().push(name.to_string());
    }
    out
}

/// The one full name among the images of `tag` that extends the kernel's `short` name;
/// `None` if there is none or more than one (identical code under two names).
fn full_name<'a>(jitted: &'a HashMap<String, Vec<String>>, tag: &str, short: &str) -> Option<&'a str> {
    let mut candidates = jitted.get(tag)?.iter().filter(|name| name.starts_with(short));
    let first = candidates.next()?;
    candidates.all(|other| other == first).then_some(first.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_name_is_completed_only_when_unambiguous() {
        let mut jitted = HashMap::new();
        jitted.insert("aa".to_string(), vec!["moat_tp_connect_enter".to_string()]);
        jitted.insert("bb".to_string(), vec!["moat_tp_connect_exit".to_string(), "moat_tp_connect_exit".to_string()]);
        jitted.insert("cc".to_string(), vec!["moat_one_longer_name".to_string(), "moat_one_longer_other".to_string()]);
        assert_eq!(full_name(&jitted, "aa", "moat_tp_connect"), Some("moat_tp_connect_enter"));
        // The same program loaded twice (two agents) is still one name.
        assert_eq!(full_name(&jitted, "bb", "moat_tp_connect"), Some("moat_tp_connect_exit"));
        assert_eq!(full_name(&jitted, "cc", "moat_one_longer"), None);
        assert_eq!(full_name(&jitted, "aa", "moat_egress"), None);
        assert_eq!(full_name(&jitted, "zz", "moat_tp_connect"), None);
    }
}
