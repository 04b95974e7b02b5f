//! What the bench sections share: the context they run in, the rows they return, and
//! measuring one `moat lab bench` run. `bench.rs` dispatches to the sections and reports.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::util::{cargo, check_interrupt, run, stdout_of, Lab};

pub const REPEATS: usize = 3;

/// What every section gets.
pub struct Context {
    pub moat: PathBuf,
    pub seconds: u32,
    release: std::cell::OnceCell<PathBuf>,
}

impl Context {
    pub fn new(moat: PathBuf, seconds: u32) -> Self {
        Context { moat, seconds, release: Default::default() }
    }

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
}
