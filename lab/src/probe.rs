//! `moat lab probe`: connection attempts from pod to pod, each made by `__pod-connect`
//! inside the source pod (its netns and cgroup). A matrix probes every ordered pair.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::podexec::{PodPlace, Start};
use super::state::{LabState, PodState};
use super::{LabError, NameArg, Output};
use moat_agent::model::flow::{parse_pod, Family, Target};
use moat_agent::model::PodKey;

const CONCURRENCY: usize = 16;

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(long, value_parser = parse_pod, required_unless_present = "matrix", conflicts_with = "matrix")]
    pub from: Option<PodKey>,
    #[arg(long, value_parser = parse_pod, required_unless_present = "matrix", conflicts_with = "matrix")]
    pub to: Option<PodKey>,
    /// Probe every ordered pair of distinct pods.
    #[arg(long)]
    pub matrix: bool,
    /// PORT[/TCP|UDP|SCTP] (default TCP) or `icmp`.
    #[arg(long, value_parser = Target::parse)]
    pub port: Target,
    #[arg(long, value_enum, default_value = "4")]
    pub family: Family,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub verdict: String,
    #[serde(skip)]
    pub detail: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ProbeReport {
    pub port: u16,
    pub protocol: &'static str,
    pub results: Vec<ProbeResult>,
}

#[derive(Deserialize)]
struct Verdict {
    verdict: String,
    #[serde(default)]
    detail: String,
}

pub fn run(args: ProbeArgs) -> Result<(), LabError> {
    let state = LabState::load(&args.name.name)?;
    let pairs: Vec<(PodKey, PodKey)> = match (&args.from, &args.to) {
        (Some(from), Some(to)) if !args.matrix => vec![(from.clone(), to.clone())],
        _ => {
            let keys: Vec<PodKey> = state
                .pods
                .values()
                .map(|p| PodKey::new(&p.namespace, &p.name))
                .collect();
            let mut pairs = Vec::new();
            for from in &keys {
                for to in keys.iter().filter(|to| *to != from) {
                    pairs.push((from.clone(), to.clone()));
                }
            }
            pairs
        }
    };
    let results = probe_all(&state, &pairs, args.port, args.family, args.timeout_ms)?;
    let report = ProbeReport {
        port: args.port.port(),
        protocol: args.port.protocol(),
        results,
    };
    match args.output {
        Output::Json => println!("{}", report_json(&report)),
        Output::Text if args.matrix => print!("{}", matrix_text(&report)),
        Output::Text => {
            for result in &report.results {
                let what = match report.port {
                    0 => report.protocol.to_string(),
                    port => format!("{port}/{}", report.protocol),
                };
                println!(
                    "{} -> {} {what}: {} ({})",
                    result.from, result.to, result.verdict, result.detail
                );
            }
        }
    }
    Ok(())
}

pub fn report_json(report: &ProbeReport) -> String {
    serde_json::to_string(report).unwrap_or_default()
}

/// Runs the probes, at most `CONCURRENCY` at once; results sorted by (from, to).
pub fn probe_all(
    state: &LabState,
    pairs: &[(PodKey, PodKey)],
    target: Target,
    family: Family,
    timeout_ms: u64,
) -> Result<Vec<ProbeResult>, LabError> {
    // Resolve everything first, so a bad name fails before any probe runs.
    let jobs = pairs
        .iter()
        .map(|(from, to)| Ok((from, to, resolve(state, from, to, family)?)))
        .collect::<Result<Vec<_>, LabError>>()?;
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    let failure: Mutex<Option<LabError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENCY.min(jobs.len()) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((from, to, (pod, ip))) = jobs.get(index) else {
                    return;
                };
                match probe_one(pod, *ip, target, timeout_ms) {
                    Ok((verdict, detail)) => {
                        let result = ProbeResult {
                            from: from.to_string(),
                            to: to.to_string(),
                            verdict,
                            detail,
                        };
                        if let Ok(mut results) = results.lock() {
                            results.push(result);
                        }
                    }
                    Err(error) => {
                        if let Ok(mut failure) = failure.lock() {
                            failure.get_or_insert(error);
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().ok().flatten() {
        return Err(error);
    }
    let mut results = results
        .into_inner()
        .map_err(|_| LabError::Internal("probe results lock poisoned".into()))?;
    results.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    Ok(results)
}

/// The source pod's state and the destination's address of `family`.
pub fn resolve<'s>(
    state: &'s LabState,
    from: &PodKey,
    to: &PodKey,
    family: Family,
) -> Result<(&'s PodState, IpAddr), LabError> {
    let source = state.pod(&from.to_string())?;
    let destination = state.pod(&to.to_string())?;
    let ip = match family {
        Family::V4 => IpAddr::V4(destination.ipv4),
        Family::V6 => IpAddr::V6(destination.ipv6),
    };
    Ok((source, ip))
}

fn probe_one(
    pod: &PodState,
    ip: IpAddr,
    target: Target,
    timeout_ms: u64,
) -> Result<(String, String), LabError> {
    let protocol = match target {
        Target::Icmp => "icmp".to_string(),
        Target::Port(_, protocol) => protocol.as_str().to_ascii_lowercase(),
    };
    let argv = [
        "__pod-connect".to_string(),
        "--to".into(),
        ip.to_string(),
        "--port".into(),
        target.port().to_string(),
        "--protocol".into(),
        protocol,
        "--timeout-ms".into(),
        timeout_ms.to_string(),
    ];
    let output = run_in_pod(pod, &argv)?;
    let line = output.lines().last().unwrap_or_default();
    let verdict: Verdict = serde_json::from_str(line).map_err(|_| LabError::InPod {
        pod: pod.key(),
        message: format!("__pod-connect printed {:?}", output.trim()),
    })?;
    Ok((verdict.verdict, verdict.detail))
}

/// Runs `moat ARGV...` inside `pod` and returns its stdout. Exit codes 0 and 1 are answers;
/// anything else is an error carrying stderr.
pub fn run_in_pod(pod: &PodState, argv: &[String]) -> Result<String, LabError> {
    let mut command = PodPlace::of(pod)?.moat(Start::Attached)?;
    let output = command
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("moat {}", argv.join(" ")),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0 | 1) => Ok(stdout),
        _ => Err(LabError::InPod {
            pod: pod.key(),
            message: format!(
                "`moat {}` failed ({}): {}{}",
                argv.join(" "),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}

/// Rows are sources, columns destinations: `+` allow, `.` deny, blank for the pod itself.
pub fn matrix_text(report: &ProbeReport) -> String {
    let mut pods: Vec<&str> = report
        .results
        .iter()
        .flat_map(|r| [r.from.as_str(), r.to.as_str()])
        .collect();
    pods.sort();
    pods.dedup();
    let width = pods.iter().map(|p| p.len()).max().unwrap_or(0).max(4);
    let what = match report.port {
        0 => report.protocol.to_string(),
        port => format!("{port}/{}", report.protocol),
    };
    let mut out = format!("{what}  (+ allow, . deny; rows from, columns to)\n");
    for (index, pod) in pods.iter().enumerate() {
        out.push_str(&format!("  [{index}] {pod}\n"));
    }
    out.push_str(&format!("{:width$} ", "from\\to"));
    for index in 0..pods.len() {
        out.push_str(&format!("{index:>3}"));
    }
    out.push('\n');
    for from in &pods {
        out.push_str(&format!("{from:width$} "));
        for to in &pods {
            let mark = report
                .results
                .iter()
                .find(|r| r.from == *from && r.to == *to)
                .map(|r| if r.verdict == "allow" { "+" } else { "." })
                .unwrap_or(" ");
            out.push_str(&format!("{mark:>3}"));
        }
        out.push('\n');
    }
    for result in report.results.iter().filter(|r| r.verdict != "allow") {
        out.push_str(&format!(
            "deny {} -> {}: {}\n",
            result.from, result.to, result.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_shape() {
        let result = |from: &str, to: &str, verdict: &str| ProbeResult {
            from: from.into(),
            to: to.into(),
            verdict: verdict.into(),
            detail: "connect: Operation not permitted".into(),
        };
        let report = ProbeReport {
            port: 80,
            protocol: "TCP",
            results: vec![result("x/a", "y/b", "allow"), result("y/b", "x/a", "deny")],
        };
        assert_eq!(
            report_json(&report),
            r#"{"port":80,"protocol":"TCP","results":[{"from":"x/a","to":"y/b","verdict":"allow"},{"from":"y/b","to":"x/a","verdict":"deny"}]}"#
        );
        let text = matrix_text(&report);
        assert!(text.contains("deny y/b -> x/a"), "{text}");
        let icmp = ProbeReport {
            port: Target::Icmp.port(),
            protocol: Target::Icmp.protocol(),
            results: vec![],
        };
        assert_eq!(
            report_json(&icmp),
            r#"{"port":0,"protocol":"ICMP","results":[]}"#
        );
    }
}
