//! `cargo xtask bench`: measurements in a lab, moat versus no program attached.
//!
//! Each section is one function returning a [`Section`] (`bench_run.rs` holds what sections
//! share); `run_bench` runs them in order and `--write` replaces each one's marked block
//! (`<!-- bench:ID -->` … `<!-- /bench:ID -->`) in the given markdown file. To add a section (policy scale, watch latency, detector overhead),
//! write `fn policy_scale(ctx: &Context) -> Result<Section>` and list it in `SECTIONS`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::bench_run::{lab_bench, median, Context, Measurement, Row, Section, REPEATS};
use crate::util::{cargo, check_interrupt, run, stdout_of, workspace_root, Lab};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per measurement (each one is repeated 3 times; the median is reported).
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Replace the marked sections of this markdown file (relative to the workspace root),
    /// e.g. docs/benchmarks.md.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Run only these sections (marker ids, e.g. np-datapath); repeatable. Default: all.
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
}

type SectionFn = fn(&Context) -> Result<Section>;
const SECTIONS: &[(&str, SectionFn)] = &[
    ("foundation", foundation),
    ("np-datapath", crate::bench_np::datapath),
    ("e2e", crate::bench_e2e::e2e),
    ("np-compile", crate::bench_np::compile),
    ("kube", crate::bench_kube::kube),
    ("guard", crate::bench_guard::guard),
    ("idle", crate::bench_idle::idle),
    ("fairness", crate::bench_fair::fairness),
    ("dns", crate::bench_dns::dns),
];

pub fn run_bench(args: &BenchArgs) -> Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    // Prebuilt: binaries from MOAT_BIN (and MOAT_ATTACK_BIN), nothing installed or built —
    // for a run inside a `cargo xtask vm` guest, which sees this machine's build read-only.
    if std::env::var_os("MOAT_BENCH_PREBUILT").is_none() {
        crate::setup::run_setup(&crate::setup::SetupArgs::default())?;
        check_interrupt()?;
        run(cargo().args(["build", "-p", "moat-agent", "-p", "moat-lab", "-p", "moat-testapi"]))?;
        check_interrupt()?;
    }
    let ctx = Context::new(crate::util::moat_bin()?, args.seconds);
    for id in &args.only {
        if !SECTIONS.iter().any(|(known, _)| known == id) {
            let known: Vec<&str> = SECTIONS.iter().map(|(id, _)| *id).collect();
            bail!("no bench section {id:?} (have: {})", known.join(", "));
        }
    }

    let command = command_line(args);
    let mut sections = Vec::new();
    for (id, section) in SECTIONS {
        if args.only.is_empty() || args.only.iter().any(|only| only == id) {
            sections.push(section(&ctx)?);
        }
    }
    let environment = environment();
    for section in &sections {
        println!("\n### {}\n\n{}", section.title, render(section, &command, &environment));
    }
    if let Some(path) = &args.write {
        let path = workspace_root().join(path);
        let mut text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for section in &sections {
            text = replace_section(&text, section.id, &render(section, &command, &environment))
                .with_context(|| format!("updating {}", path.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sections

/// TCP request/response rate and bulk throughput between two pods of one tenant.
fn foundation(ctx: &Context) -> Result<Section> {
    const FROM: &str = "bench/client";
    const TO: &str = "bench/server";
    const PORT: &str = "8080";
    let modes = [("TCP request/response", "rr"), ("TCP stream", "stream")];

    // Two labs side by side, one with moat attached at its pods' cgroup root and one with no
    // program at all, measured alternately so background load hits both alike.
    println!("\n== foundation: lab \"bench-base\" (no program) and lab \"bench-moat\" (moat attached)");
    let manifests = workspace_root().join("xtask/bench");
    let base = Lab::up(&ctx.moat, "bench-base", std::slice::from_ref(&manifests), &["--no-agent"])?;
    let moat = Lab::up(&ctx.moat, "bench-moat", &[manifests], &[])?;
    let mut rows = Vec::new();
    for (metric, mode) in modes {
        let (mut baseline, mut attached) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            baseline.push(lab_bench(&base, FROM, TO, PORT, mode, ctx.seconds)?);
            attached.push(lab_bench(&moat, FROM, TO, PORT, mode, ctx.seconds)?);
        }
        rows.push(Row {
            metric: metric.to_string(),
            baseline: median(&mut baseline).context("no measurements")?,
            moat: median(&mut attached).context("no measurements")?,
        });
    }
    drop((base, moat));
    Ok(Section {
        id: "foundation",
        title: "Foundation: same-tenant TCP between two lab pods",
        columns: ["baseline (no program)", "moat"],
        rows,
        method: format!("Two labs up at once, measured alternately; median of {REPEATS} runs each"),
        notes: String::new(),
        table: None,
    })
}

// ---------------------------------------------------------------------------------------
// Reporting

fn command_line(args: &BenchArgs) -> String {
    let mut command = format!("cargo xtask bench --seconds {}", args.seconds);
    for only in &args.only {
        command.push_str(&format!(" --only {only}"));
    }
    if let Some(path) = &args.write {
        command.push_str(&format!(" --write {}", path.display()));
    }
    command
}

/// Kernel and CPU count: numbers mean little without them.
fn environment() -> String {
    let kernel = stdout_of(Command::new("uname").arg("-r")).map(|text| text.trim().to_string());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    match (kernel, cpus) {
        (Ok(kernel), Some(cpus)) => format!("Linux {kernel}, {cpus} CPUs"),
        (Ok(kernel), None) => format!("Linux {kernel}"),
        _ => "unknown machine".to_string(),
    }
}

fn render(section: &Section, command: &str, environment: &str) -> String {
    if let Some(table) = &section.table {
        return format!("{table}\n{environment}. Command:\n\n```\n{command}\n```\n");
    }
    let [baseline, subject] = section.columns;
    let mut out = format!("| metric | {baseline} | {subject} | ratio |\n");
    out.push_str("|---|---:|---:|---:|\n");
    for row in &section.rows {
        let ratio = if row.baseline.rate > 0.0 {
            format!("{:.3}", row.moat.rate / row.baseline.rate)
        } else {
            "n/a".to_string()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {ratio} |\n",
            row.metric,
            format_rate(&row.baseline),
            format_rate(&row.moat)
        ));
    }
    if !section.notes.is_empty() {
        out.push_str(&format!("\n{}\n", section.notes.trim_end()));
    }
    out.push_str(&format!(
        "\n{}; {environment}. Command:\n\n```\n{command}\n```\n",
        section.method
    ));
    out
}

fn format_rate(measurement: &Measurement) -> String {
    let digits = if measurement.rate.abs() >= 100.0 || measurement.rate == 0.0 { 1 } else { 3 };
    format!("{:.*} {}", digits, measurement.rate, measurement.unit)
}

/// Replaces what lies between `<!-- bench:ID -->` and `<!-- /bench:ID -->`.
fn replace_section(text: &str, id: &str, body: &str) -> Result<String> {
    let open = format!("<!-- bench:{id} -->");
    let close = format!("<!-- /bench:{id} -->");
    let start = text.find(&open).with_context(|| format!("no {open} marker"))? + open.len();
    let end = text[start..].find(&close).with_context(|| format!("no {close} marker after {open}"))? + start;
    Ok(format!("{}\n{}\n{}", &text[..start], body.trim_end(), &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_marked_section() {
        let text = "# B\n\n<!-- bench:foundation -->\nold\n<!-- /bench:foundation -->\n\ntail\n";
        let out = replace_section(text, "foundation", "new\n").unwrap();
        assert_eq!(out, "# B\n\n<!-- bench:foundation -->\nnew\n<!-- /bench:foundation -->\n\ntail\n");
        // Idempotent on its own output.
        assert_eq!(replace_section(&out, "foundation", "new").unwrap(), out);
        assert!(replace_section("no markers", "foundation", "x").is_err());
    }
}
