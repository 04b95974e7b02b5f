//! `cargo xtask bench`: measurements in a lab, moat versus no program attached.
//!
//! Each section is one function returning a [`Section`]; `run_bench` runs them in order and
//! `--write` replaces each one's marked block (`<!-- bench:ID -->` … `<!-- /bench:ID -->`) in
//! the given markdown file. To add a section (policy scale, watch latency, detector overhead),
//! write `fn policy_scale(ctx: &Context) -> Result<Section>` and list it in `SECTIONS`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{cargo, check_interrupt, run, stdout_of, workspace_root, Lab};

pub const REPEATS: usize = 3;

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

/// What every section gets.
pub struct Context {
    pub moat: PathBuf,
    pub seconds: u32,
    release: std::cell::OnceCell<PathBuf>,
}

impl Context {
    /// The release build of the agent (and of `moat-lab` beside it), built on first use: for
    /// sections whose figures include userspace work (compiling, loading), which a debug
    /// build would distort.
    pub fn moat_release(&self) -> Result<PathBuf> {
        if let Some(path) = self.release.get() {
            return Ok(path.clone());
        }
        run(cargo().args(["build", "--release", "-p", "moat-agent", "-p", "moat-lab"]))?;
        let path = crate::util::target_dir()?.join("release").join("moat");
        Ok(self.release.get_or_init(|| path).clone())
    }

    /// The release build of `moat-lab`, which holds the `__bench-*` helpers.
    pub fn lab_release(&self) -> Result<PathBuf> {
        Ok(crate::util::lab_bin_beside(&self.moat_release()?))
    }
}

/// One section's result.
pub struct Section {
    /// The marker id: `<!-- bench:ID -->`.
    pub id: &'static str,
    pub title: &'static str,
    /// Column headings of the baseline and of the subject.
    pub columns: [&'static str; 2],
    pub rows: Vec<Row>,
    /// How the figures were taken (repeats, medians), before the machine and command.
    pub method: String,
    /// Markdown after the table (extra figures, caveats); may be empty.
    pub notes: String,
    /// A section that is not moat-versus-baseline renders its own table.
    pub table: Option<String>,
}

pub struct Row {
    pub metric: String,
    pub baseline: Measurement,
    pub moat: Measurement,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub rate: f64,
    pub unit: String,
}

type SectionFn = fn(&Context) -> Result<Section>;
const SECTIONS: &[(&str, SectionFn)] = &[
    ("foundation", foundation),
    ("np-datapath", crate::bench_np::datapath),
    ("e2e", crate::bench_e2e::e2e),
    ("np-compile", crate::bench_np::compile),
    ("kube", crate::bench_kube::kube),
    ("guard", crate::bench_guard::guard),
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
    let ctx = Context { moat: crate::util::moat_bin()?, seconds: args.seconds, release: Default::default() };
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
// Measuring

/// One `moat lab bench` run: its mean rate.
pub fn lab_bench(lab: &Lab, from: &str, to: &str, port: &str, mode: &str, seconds: u32) -> Result<Measurement> {
    Ok(lab_bench_run(lab, from, to, port, mode, seconds)?.0)
}

/// One `moat lab bench` run: its mean rate, and (transaction modes) its fastest batch's.
pub fn lab_bench_run(lab: &Lab, from: &str, to: &str, port: &str, mode: &str, seconds: u32) -> Result<(Measurement, Option<Measurement>)> {
    check_interrupt()?;
    let mut cmd = lab.command();
    cmd.args(["bench", "--name", lab.name(), "--from", from, "--to", to, "--port", port])
        .args(["--mode", mode, "--seconds", &seconds.to_string(), "-o", "json"]);
    eprintln!("$ {}", crate::util::render(&cmd));
    let text = stdout_of(&mut cmd)?;
    let (measurement, best) = parse_measurement(&text)?;
    eprintln!("  {mode}: {:.1} {} (fastest batch: {:.1})", measurement.rate, measurement.unit, best.as_ref().map_or(0.0, |b| b.rate));
    Ok((measurement, best))
}

/// `{"mode":"rr","seconds":5.0,"ops":12345,"rate":2469.0,"unit":"transactions/s","best_rate":2600.0}`
fn parse_measurement(text: &str) -> Result<(Measurement, Option<Measurement>)> {
    let line = text.lines().rev().find(|line| line.trim_start().starts_with('{')).unwrap_or(text);
    let value: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("`moat lab bench` printed no JSON object: {text:?}"))?;
    let rate = value["rate"].as_f64().with_context(|| format!("no numeric \"rate\" in {line}"))?;
    let unit = value["unit"].as_str().unwrap_or("ops/s").to_string();
    let best = value["best_rate"].as_f64().filter(|best| *best > 0.0).map(|rate| Measurement { rate, unit: unit.clone() });
    Ok((Measurement { rate, unit }, best))
}

/// Runs `measure` `times` times and returns the run with the median rate.
pub fn median(runs: &mut [Measurement]) -> Option<Measurement> {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    runs.get(runs.len().checked_sub(1)? / 2).cloned()
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

    fn m(rate: f64) -> Measurement {
        Measurement { rate, unit: "transactions/s".into() }
    }

    #[test]
    fn parses_lab_bench_json() {
        let text = r#"{"mode":"rr","seconds":5.0,"ops":12345,"rate":2469.0,"unit":"transactions/s"}"#;
        assert_eq!(parse_measurement(text).unwrap(), (m(2469.0), None));
        let text = r#"{"mode":"crr","seconds":5.0,"ops":12345,"rate":2469.0,"unit":"transactions/s","best_rate":2600.5}"#;
        assert_eq!(parse_measurement(text).unwrap(), (m(2469.0), Some(m(2600.5))));
    }

    #[test]
    fn rejects_output_without_a_rate() {
        assert!(parse_measurement("{\"mode\":\"rr\"}").is_err());
        assert!(parse_measurement("oops").is_err());
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&mut [m(3.0), m(1.0), m(2.0)]), Some(m(2.0)));
        assert_eq!(median(&mut []), None);
    }

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
