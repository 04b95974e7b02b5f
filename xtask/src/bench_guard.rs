//! `cargo xtask bench --only guard`: what the runtime guard's programs add to the system
//! calls they watch, and to those they do not. Six loops of `moat-attack loop` (open+close
//! of a regular file, stat of it, getppid, connect+accept+close on a unix socket and on a
//! loopback TCP listener, fork+exec of /bin/true) run in a lab pod, where the guard evaluates every actor fully, and on the
//! host, under three configurations: no agent, the agent with the guard at its defaults,
//! and the agent with every detection `off`.
//!
//! The guard's tracepoints are system-wide, so the configurations cannot run side by side
//! (the no-agent baseline would pay for the other lab's programs): each round brings the lab
//! up once per configuration, in an order that rotates from round to round, and `lab down`
//! unpins (detaches) everything before the next one. Whatever the agent attaches is
//! measured; the section lists it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::bench_run::{Context, Measurement, Row, Section};
use crate::bench_guard_agent::{agent_status, lab_agent_pid, raw_tracepoints_elsewhere, AgentStatus};
use crate::util::{cargo, check_interrupt, render, run, stdout_of, target_dir, workspace_root, Lab};

const LAB: &str = "guard-bench";
const POD: &str = "bench/client";
const ROUNDS: usize = 7;
/// Iterations per second of `--seconds`: each loop then runs for a fraction of it, so a
/// round (three lab ups, every loop in the pod and on the host) stays short on a slow machine.
const OPEN_PER_SECOND: u64 = 40_000;
const STAT_PER_SECOND: u64 = 60_000;
const GETPPID_PER_SECOND: u64 = 400_000;
const EXEC_PER_SECOND: u64 = 100;
const CONNECT_PER_SECOND: u64 = 20_000;
const TCP_CONNECT_PER_SECOND: u64 = 10_000;
const EXEC_PROGRAM: &str = "/bin/true";
/// Calls per timed batch: short batches (a few ms), so on a busy machine some run
/// undisturbed; the fastest batch of each run is its figure.
const OPEN_BATCH: u64 = 100;
const STAT_BATCH: u64 = 100;
const GETPPID_BATCH: u64 = 1_000;
const EXEC_BATCH: u64 = 2;
const CONNECT_BATCH: u64 = 100;
const TCP_CONNECT_BATCH: u64 = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    NoAgent,
    Defaults,
    Off,
}

impl Config {
    const ALL: [Config; 3] = [Config::NoAgent, Config::Defaults, Config::Off];

    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "no agent",
            Config::Defaults => "guard at its defaults",
            Config::Off => "every detection off",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Pod,
    Host,
}

impl Place {
    fn label(self) -> &'static str {
        match self {
            Place::Pod => "in a pod",
            Place::Host => "on the host",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Loop {
    Open,
    Stat,
    Getppid,
    Connect,
    TcpConnect,
    Exec,
}

impl Loop {
    const ALL: [Loop; 6] = [Loop::Open, Loop::Stat, Loop::Getppid, Loop::Connect, Loop::TcpConnect, Loop::Exec];

    fn label(self) -> &'static str {
        match self {
            Loop::Open => "open+close",
            Loop::Stat => "stat",
            Loop::Getppid => "getppid",
            Loop::Connect => "unix connect",
            Loop::TcpConnect => "tcp connect",
            Loop::Exec => "fork+exec",
        }
    }
}

/// One loop run: ns per call in its fastest batch, and over the whole run.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    fastest: f64,
    mean: f64,
}

/// One configuration's samples: `[loop][place]`, one per round.
type Samples = [[Vec<Sample>; 2]; Loop::ALL.len()];

pub fn guard(ctx: &Context) -> Result<Section> {
    // The loops in a release build, so the tool's own work dilutes no ratio.
    let attack = match std::env::var_os("MOAT_ATTACK_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            run(cargo().args(["build", "--release", "-p", "moat-integration", "--bin", "moat-attack"]))?;
            target_dir()?.join("release").join("moat-attack")
        }
    };
    let rounds = match std::env::var("MOAT_BENCH_ROUNDS") {
        Ok(text) => text.parse::<usize>().ok().filter(|n| *n > 0).with_context(|| format!("MOAT_BENCH_ROUNDS={text}: a positive count"))?,
        Err(_) => ROUNDS,
    };
    let bench = Bench {
        moat: ctx.moat.clone(),
        attack,
        manifests: workspace_root().join("xtask/bench"),
        seconds: u64::from(ctx.seconds),
        rounds,
    };

    // What the agent attaches, and the detection ids for the all-off configuration.
    println!("\n== guard: what the lab's agent attaches");
    let (AgentStatus { programs, detections }, costs) = {
        let lab = bench.lab(&[])?;
        (agent_status(&bench.moat, LAB)?, bench.program_costs(&lab)?)
    };
    let off_config = write_off_config(&detections)?;
    let (samples, foreign) = bench.rounds(&off_config)?;
    let (rows, spread) = tables(&samples)?;

    let foreign = if foreign.is_empty() {
        "No other process held a raw tracepoint link during the measurements.".to_string()
    } else {
        format!(
            "Other processes held raw tracepoint links during the measurements (they cost every configuration alike): {}.",
            foreign.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    let notes = format!(
        "Programs the lab's agent attached: {}. Detections at their defaults: {}. {foreign}\n\n\
         `moat-attack loop open N FILE` times N open(2)+close(2) of a regular file (the \
         `moat-attack` binary itself, {} per run, in batches of {OPEN_BATCH}); `loop stat` \
         stat(2)s the same file ({} per run, in batches of {STAT_BATCH}) and `loop getppid` \
         makes the cheapest system call ({} per run, in batches of {GETPPID_BATCH}): no \
         detection watches either; `moat-attack \
         loop exec N {EXEC_PROGRAM}` times N fork(2)+execve(2)+waitpid(2) ({} per run, in \
         batches of {EXEC_BATCH}); `moat-attack loop connect-unix N` times N connect(2) to a \
         unix socket of its own, accept(2) and two close(2) ({} per run, in batches of \
         {CONNECT_BATCH}: cgroup/connect_unix looks the path up, the connect probe the peer); \
         `moat-attack loop connect-tcp N` the same with a TCP listener of its own on \
         127.0.0.1 ({} per run, in batches of {TCP_CONNECT_BATCH}; the accepted end resets, so \
         no TIME_WAIT piles up; in a pod the datapath's programs see the loopback packets and \
         `moat_connect4` the connect, in every agent configuration alike). Only the loop is timed. In a pod: through `moat lab exec` \
         (the pod's cgroup and namespaces); on the host: from xtask's own cgroup. The \
         table gives each run's fastest batch (the one least disturbed by other work on the \
         machine; a cost the programs add to every call is in every batch), median over the \
         rounds. Ratios are agent / no agent: above 1 is a cost.\n\n\
         Run to run: the fastest batch of every run, and the mean over whole runs, which \
         carries the machine's other load:\n\n{spread}\n{costs}",
        if programs.is_empty() { "none".to_string() } else { programs.join(", ") },
        detections.iter().map(|(id, mode)| format!("{id} {mode}")).collect::<Vec<_>>().join(", "),
        bench.iterations(Loop::Open),
        bench.iterations(Loop::Stat),
        bench.iterations(Loop::Getppid),
        bench.iterations(Loop::Exec),
        bench.iterations(Loop::Connect),
        bench.iterations(Loop::TcpConnect),
    );
    Ok(Section {
        id: "guard",
        title: "Runtime guard: system calls watched and not, with and without the agent",
        columns: ["no agent", "agent"],
        rows,
        method: format!(
            "Median of {} rounds; each round brings lab `{LAB}` up once per \
             configuration (order rotating between rounds) and runs every loop (release build \
             of `moat-attack`) in the pod and on the host",
            bench.rounds
        ),
        notes,
        table: None,
    })
}

struct Bench {
    moat: PathBuf,
    attack: PathBuf,
    manifests: PathBuf,
    seconds: u64,
    rounds: usize,
}

impl Bench {
    fn lab(&self, extra: &[&str]) -> Result<Lab> {
        Lab::up(&self.moat, LAB, std::slice::from_ref(&self.manifests), extra)
    }

    fn iterations(&self, kind: Loop) -> u64 {
        match kind {
            Loop::Open => OPEN_PER_SECOND * self.seconds,
            Loop::Stat => STAT_PER_SECOND * self.seconds,
            Loop::Getppid => GETPPID_PER_SECOND * self.seconds,
            Loop::Exec => EXEC_PER_SECOND * self.seconds,
            Loop::Connect => CONNECT_PER_SECOND * self.seconds,
            Loop::TcpConnect => TCP_CONNECT_PER_SECOND * self.seconds,
        }
    }

    /// Each moat program's runs and run time per call of every loop, at the defaults: one
    /// more run of each loop under `moat-lab __bench-prog-stats` (the kernel's accounting is
    /// on for that run only, never for the timed ones).
    fn program_costs(&self, lab: &Lab) -> Result<String> {
        let lab_bin = crate::util::lab_bin_beside(&self.moat);
        let mut costs = Vec::new();
        for kind in Loop::ALL {
            for place in [Place::Pod, Place::Host] {
                check_interrupt()?;
                let iterations = self.iterations(kind);
                let looped = loop_command(lab, &self.attack, kind, place, iterations);
                let mut cmd = Command::new(&lab_bin);
                cmd.args(["__bench-prog-stats", "--"]).arg(looped.get_program()).args(looped.get_args());
                eprintln!("$ {}", render(&cmd));
                let text = stdout_of(&mut cmd)?;
                let value: Value = serde_json::from_str(text.trim()).with_context(|| format!("no JSON from __bench-prog-stats: {text:?}"))?;
                let label = format!("{} {}", kind.label(), place.label());
                costs.extend(crate::bench_programs::per_call(&label, iterations, &value)?);
            }
        }
        Ok(crate::bench_programs::table(&costs, &crate::bench_programs::GUARD_TABLE))
    }

    /// Every round, every configuration: each configuration's samples, and the raw
    /// tracepoint links other processes held meanwhile.
    fn rounds(&self, off_config: &Path) -> Result<(Vec<Samples>, BTreeSet<String>)> {
        let off_arg = off_config.display().to_string();
        let mut samples: Vec<Samples> = Config::ALL.iter().map(|_| Samples::default()).collect();
        let mut foreign = BTreeSet::new();
        for round in 0..self.rounds {
            for slot in order(round) {
                let config = Config::ALL[slot];
                println!("\n== guard: round {} of {}, {}", round + 1, self.rounds, config.label());
                let extra: Vec<&str> = match config {
                    Config::NoAgent => vec!["--no-agent"],
                    Config::Defaults => vec![],
                    Config::Off => vec!["--config", &off_arg],
                };
                let lab = self.lab(&extra)?;
                let ours = lab_agent_pid(&self.moat, LAB)?;
                foreign.extend(raw_tracepoints_elsewhere(ours).into_iter().map(|l| format!("pid {}: {}", l.pid, l.description)));
                for (l, kind) in Loop::ALL.into_iter().enumerate() {
                    for (p, place) in [Place::Pod, Place::Host].into_iter().enumerate() {
                        let sample = measure(&lab, &self.attack, kind, place, self.iterations(kind))?;
                        eprintln!(
                            "  {} {}, {}: fastest batch {:.1} ns/op, mean {:.1} ns/op",
                            kind.label(),
                            place.label(),
                            config.label(),
                            sample.fastest,
                            sample.mean
                        );
                        samples[slot][l][p].push(sample);
                    }
                }
            }
        }
        Ok((samples, foreign))
    }
}

/// The section's rows (each agent configuration against no agent, fastest batches), and a
/// markdown table of the run-to-run spread.
fn tables(samples: &[Samples]) -> Result<(Vec<Row>, String)> {
    let mut rows = Vec::new();
    let mut spread = String::from(
        "| loop | configuration | fastest batch: lowest – highest run | whole-run mean (median run) |\n|---|---|---:|---:|\n",
    );
    for (l, kind) in Loop::ALL.into_iter().enumerate() {
        for (p, place) in [Place::Pod, Place::Host].into_iter().enumerate() {
            let of = |slot: usize, pick: fn(&Sample) -> f64| median(&samples[slot][l][p].iter().map(pick).collect::<Vec<_>>());
            let baseline = per_op(kind, of(0, |s| s.fastest)?);
            for (slot, config) in Config::ALL.iter().enumerate().skip(1) {
                rows.push(Row {
                    metric: format!("{} {}: {}", kind.label(), place.label(), config.label()),
                    baseline: baseline.clone(),
                    moat: per_op(kind, of(slot, |s| s.fastest)?),
                });
            }
            for (slot, config) in Config::ALL.iter().enumerate() {
                let fastest: Vec<f64> = samples[slot][l][p].iter().map(|s| s.fastest).collect();
                let low = fastest.iter().copied().fold(f64::INFINITY, f64::min);
                let high = fastest.iter().copied().fold(0.0, f64::max);
                spread.push_str(&format!(
                    "| {} {} | {} | {} – {} | {} |\n",
                    kind.label(),
                    place.label(),
                    config.label(),
                    format_per_op(&per_op(kind, low)),
                    format_per_op(&per_op(kind, high)),
                    format_per_op(&per_op(kind, of(slot, |s| s.mean)?)),
                ));
            }
        }
    }
    Ok((rows, spread))
}

/// The configurations' indices in round `round`: each leads once every three rounds, so
/// a trend over the run (a build starting elsewhere) does not favour one of them.
fn order(round: usize) -> [usize; 3] {
    let n = Config::ALL.len();
    [round % n, (round + 1) % n, (round + 2) % n]
}

/// An agent config with every detection `off`, in the target directory.
fn write_off_config(detections: &[(String, String)]) -> Result<PathBuf> {
    let mut text = String::from("# cargo xtask bench --only guard: every detection off\nguard:\n  detections:\n");
    for (id, _) in detections {
        text.push_str(&format!("    {id}: \"off\"\n"));
    }
    let dir = target_dir()?.join("bench-guard");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("detections-off.yaml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One loop run.
fn measure(lab: &Lab, attack: &Path, kind: Loop, place: Place, iterations: u64) -> Result<Sample> {
    check_interrupt()?;
    let mut cmd = loop_command(lab, attack, kind, place, iterations);
    eprintln!("$ {}", render(&cmd));
    let text = stdout_of(&mut cmd)?;
    let value: Value = serde_json::from_str(text.trim()).with_context(|| format!("no JSON from the loop: {text:?}"))?;
    let number = |key: &str| value[key].as_f64().with_context(|| format!("no {key} in {value}"));
    Ok(Sample { fastest: number("min_ns_per_op")?, mean: number("ns_per_op")? })
}

/// `moat-attack loop …` for `kind`, in the pod or on the host.
fn loop_command(lab: &Lab, attack: &Path, kind: Loop, place: Place, iterations: u64) -> Command {
    let mut cmd = match place {
        Place::Pod => {
            let mut cmd = lab.command();
            cmd.args(["exec", "--name", lab.name(), POD, "--"]).arg(attack);
            cmd
        }
        Place::Host => Command::new(attack),
    };
    cmd.arg("loop");
    let batches = match kind {
        Loop::Open => {
            cmd.args(["open", &iterations.to_string()]).arg(attack);
            iterations.div_ceil(OPEN_BATCH)
        }
        Loop::Stat => {
            cmd.args(["stat", &iterations.to_string()]).arg(attack);
            iterations.div_ceil(STAT_BATCH)
        }
        Loop::Getppid => {
            cmd.args(["getppid", &iterations.to_string()]);
            iterations.div_ceil(GETPPID_BATCH)
        }
        Loop::Exec => {
            cmd.args(["exec", &iterations.to_string(), EXEC_PROGRAM]);
            iterations.div_ceil(EXEC_BATCH)
        }
        Loop::Connect => {
            cmd.args(["connect-unix", &iterations.to_string()]);
            iterations.div_ceil(CONNECT_BATCH)
        }
        Loop::TcpConnect => {
            cmd.args(["connect-tcp", &iterations.to_string()]);
            iterations.div_ceil(TCP_CONNECT_BATCH)
        }
    };
    cmd.args(["--batches", &batches.to_string()]);
    cmd
}

fn median(values: &[f64]) -> Result<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().context("no measurements")
}

/// ns for open, µs for exec: the scale each is read at.
fn per_op(kind: Loop, ns: f64) -> Measurement {
    match kind {
        Loop::Open | Loop::Stat | Loop::Getppid | Loop::Connect | Loop::TcpConnect => Measurement { rate: ns, unit: "ns/op".into() },
        Loop::Exec => Measurement { rate: ns / 1_000.0, unit: "µs/op".into() },
    }
}

fn format_per_op(measurement: &Measurement) -> String {
    format!("{:.1} {}", measurement.rate, measurement.unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_units() {
        assert_eq!(median(&[3.0, 1.0, 2.0]).unwrap(), 2.0);
        assert!(median(&[]).is_err());
        assert_eq!(per_op(Loop::Exec, 1_500_000.0), Measurement { rate: 1_500.0, unit: "µs/op".into() });
    }

    #[test]
    fn every_configuration_takes_every_position() {
        let rounds: Vec<[usize; 3]> = (0..3).map(order).collect();
        assert_eq!(rounds, vec![[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
        assert_eq!(order(3), order(0));
    }
}
