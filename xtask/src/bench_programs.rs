//! What each moat program costs per call of a bench loop (the guard's system calls, the
//! e2e section's transactions), from the kernel's own accounting (`moat-lab
//! __bench-prog-stats`): how often it ran per call, and for how long. The timed runs show
//! what a workload pays in all; this shows which program it pays for.

use anyhow::{Context as _, Result};
use serde_json::Value;

/// One program's share of one loop.
#[derive(Debug, PartialEq)]
pub struct ProgramCost {
    pub loop_label: String,
    pub program: String,
    pub runs_per_call: f64,
    pub ns_per_run: f64,
}

impl ProgramCost {
    pub fn ns_per_call(&self) -> f64 {
        self.runs_per_call * self.ns_per_run
    }
}

/// The programs that ran during `iterations` calls of the loop `label`, from
/// `__bench-prog-stats`' JSON.
pub fn per_call(label: &str, iterations: u64, stats: &Value) -> Result<Vec<ProgramCost>> {
    let programs = stats["programs"].as_array().with_context(|| format!("no programs in {stats}"))?;
    let calls = iterations.max(1) as f64;
    programs
        .iter()
        .map(|program| {
            let number = |key: &str| program[key].as_u64().with_context(|| format!("no {key} in {program}"));
            let runs = number("runs")?;
            let name = program["name"].as_str().unwrap_or("?");
            // A name the kernel cut at 15 characters that /proc/kallsyms could not complete.
            let truncated = program["truncated"].as_bool().unwrap_or(false);
            Ok(ProgramCost {
                loop_label: label.to_string(),
                program: if truncated { format!("{name}…") } else { name.to_string() },
                runs_per_call: runs as f64 / calls,
                ns_per_run: number("run_time_ns")? as f64 / runs.max(1) as f64,
            })
        })
        .collect()
}

/// How a section names what it loops over, and the text before its table.
pub struct TableWords {
    /// The first column: what a label names ("loop").
    pub label: &'static str,
    /// One iteration ("call").
    pub call: &'static str,
    pub intro: &'static str,
}

pub const GUARD_TABLE: TableWords = TableWords {
    label: "loop",
    call: "call",
    intro: "Per program at the defaults, by the kernel's own accounting (`BPF_ENABLE_STATS`, one \
            more run of each loop, apart from the timed ones; programs that ran less than once per \
            thousand calls are left out; full names from `/proc/kallsyms`, … marks one the kernel \
            cut at 15 characters):",
};

/// A markdown table of the costs, each label's programs by cost per call.
pub fn table(costs: &[ProgramCost], words: &TableWords) -> String {
    let TableWords { label: column, call, intro } = words;
    if costs.is_empty() {
        return format!("No moat program ran during the {column}s.\n");
    }
    let mut text = format!(
        "{intro}\n\n| {column} | program | runs per {call} | ns per run | ns per {call} |\n|---|---|---:|---:|---:|\n"
    );
    let mut labels: Vec<&str> = costs.iter().map(|c| c.loop_label.as_str()).collect();
    labels.dedup();
    for label in labels {
        let mut of_loop: Vec<&ProgramCost> = costs.iter().filter(|c| c.loop_label == label && c.runs_per_call >= 0.001).collect();
        of_loop.sort_by(|a, b| b.ns_per_call().total_cmp(&a.ns_per_call()));
        if of_loop.is_empty() {
            text.push_str(&format!("| {label} | none | | | |\n"));
        }
        for cost in of_loop {
            text.push_str(&format!(
                "| {label} | {} | {:.2} | {:.0} | {:.0} |\n",
                cost.program,
                cost.runs_per_call,
                cost.ns_per_run,
                cost.ns_per_call()
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_per_call_and_the_table_orders_by_them() {
        let stats = serde_json::json!({"programs": [
            {"id": 1, "name": "moat_tp_openat_", "truncated": true, "runs": 2000, "run_time_ns": 300000},
            {"id": 2, "name": "moat_device", "runs": 1, "run_time_ns": 50},
            {"id": 3, "name": "moat_tp_connect_enter", "truncated": false, "runs": 1000, "run_time_ns": 40000}
        ]});
        let costs = per_call("open+close in a pod", 2000, &stats).unwrap();
        assert_eq!(costs[0].runs_per_call, 1.0);
        assert_eq!(costs[0].ns_per_run, 150.0);
        assert_eq!(costs[0].ns_per_call(), 150.0);
        let text = table(&costs, &GUARD_TABLE);
        assert!(text.contains("| loop | program | runs per call |"), "{text}");
        let openat = text.find("moat_tp_openat_… | 1.00 | 150 | 150").unwrap();
        let connect = text.find("| moat_tp_connect_enter | 0.50 | 40 | 20").unwrap();
        assert!(openat < connect, "{text}");
        assert!(!text.contains("moat_device"), "a program that ran once in 2000 calls is left out: {text}");
        assert!(per_call("x", 10, &serde_json::json!({})).is_err());
    }
}
