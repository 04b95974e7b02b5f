//! `e2e`: what a workload sees. Pod-to-pod TCP request/response on one connection (`rr`), a
//! new TCP connection per request (`crr`, where policy engines differ: every connection is
//! a new flow) and UDP request/reply (`udp`, `sendto`/`recvfrom` on both sides) between two
//! lab pods of one tenant, under: no agent; iptables with 1,000 peers in both pods; moat
//! with the tenant floor only; moat with NetworkPolicies of 1,000 peers in both pods — the
//! last two with the runtime guard at its defaults (the full agent) and with every
//! detection off (the datapath, as far as the guard lets go of its hooks).
//!
//! Every configuration gets a fresh lab (the guard's tracepoints are system-wide, so no two
//! run at once), in an order that rotates from round to round; the release build runs the
//! agent, the pods' echo servers and the client.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::bench_run::{lab_bench_run, Context, Measurement, Row, Section};
use crate::bench_guard_agent::{agent_status, lab_agent_pid, raw_tracepoints_elsewhere, AgentStatus};
use crate::e2e_setup::{self as setup, Files, CLIENT, PEERS, SERVER, TCP_PORT, UDP_PORT};
use crate::bench_programs::{per_call, table, TableWords};
use crate::util::{capture, check_interrupt, lab_bin_beside, render, Lab};

const LAB: &str = "e2e";
/// Rounds: more than other sections, since each configuration is a fresh lab on a shared
/// machine whose load comes and goes.
const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    NoAgent,
    Iptables,
    Floor,
    Policies,
    DatapathFloor,
    DatapathPolicies,
}

impl Config {
    const ALL: [Config; 6] =
        [Config::NoAgent, Config::Iptables, Config::Floor, Config::Policies, Config::DatapathFloor, Config::DatapathPolicies];

    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "no agent",
            Config::Iptables => "iptables, 1,000 peers in both pods (no agent)",
            Config::Floor => "moat (full agent), tenant floor only",
            Config::Policies => "moat (full agent), NetworkPolicies of 1,000 peers in both pods",
            Config::DatapathFloor => "moat, every guard detection off, tenant floor only",
            Config::DatapathPolicies => "moat, every guard detection off, NetworkPolicies of 1,000 peers",
        }
    }

    fn policies(self) -> bool {
        matches!(self, Config::Policies | Config::DatapathPolicies)
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Rr,
    Crr,
    Udp,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Rr, Mode::Crr, Mode::Udp];

    fn arg(self) -> &'static str {
        match self {
            Mode::Rr => "rr",
            Mode::Crr => "crr",
            Mode::Udp => "udp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Rr => "TCP_RR (request/reply on one connection)",
            Mode::Crr => "TCP_CRR (connect, request/reply, close)",
            Mode::Udp => "UDP request/reply",
        }
    }

    fn port(self) -> u16 {
        match self {
            Mode::Udp => UDP_PORT,
            _ => TCP_PORT,
        }
    }
}

/// One run: its mean rate and its fastest batch's.
#[derive(Clone)]
struct Run {
    mean: Measurement,
    best: Measurement,
}

/// `[config][mode]`: one run per round.
type Samples = [[Vec<Run>; 3]; 6];

pub fn e2e(ctx: &Context) -> Result<Section> {
    let moat = ctx.moat_release()?;
    let dir = std::env::temp_dir().join(format!("moat-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(ctx, &moat, &dir);
    drop(std::fs::remove_dir_all(&dir));
    result
}

fn measure(ctx: &Context, moat: &Path, dir: &Path) -> Result<Section> {
    let files = setup::write_files(dir)?;
    println!("\n== e2e: what the lab's agent attaches");
    let (AgentStatus { programs, detections }, program_costs) = {
        let _lab = Lab::up(moat, LAB, std::slice::from_ref(&files.base), &[])?;
        (agent_status(moat, LAB)?, program_costs(moat, ctx.seconds)?)
    };
    let guard_off = write_guard_off(dir, &detections)?;
    let mut samples = Samples::default();
    let mut foreign = std::collections::BTreeSet::new();
    for round in 0..ROUNDS {
        for slot in order(round) {
            let config = Config::ALL[slot];
            println!("\n== e2e: round {} of {ROUNDS}, {}", round + 1, config.label());
            let lab = up(moat, config, &files, &guard_off)?;
            if config != Config::NoAgent && config != Config::Iptables {
                let ours = lab_agent_pid(moat, LAB)?;
                foreign.extend(raw_tracepoints_elsewhere(ours).into_iter().map(|l| format!("pid {}: {}", l.pid, l.description)));
            }
            if config == Config::Iptables {
                setup::load_iptables(&lab)?;
            }
            if round == 0 && (config == Config::Iptables || config.policies()) {
                setup::expect_outsider_blocked(&lab, config.label())?;
            }
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                check_interrupt()?;
                let (mean, best) = lab_bench_run(&lab, CLIENT, SERVER, &mode.port().to_string(), mode.arg(), ctx.seconds)?;
                let best = best.with_context(|| format!("`moat lab bench --mode {}` gave no fastest batch", mode.arg()))?;
                samples[slot][m].push(Run { mean, best });
            }
        }
    }
    let rows = rows(&samples)?;
    let foreign = if foreign.is_empty() {
        "No other process held a raw tracepoint link while the agent's configurations ran.".to_string()
    } else {
        format!(
            "Other processes held raw tracepoint links during the agent's configurations (they cost those alike): {}.",
            foreign.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    let notes = format!(
        "{}\n\nLab `{LAB}`: pods client, server and outsider in one namespace (one tenant); \
         `moat lab bench` from the client to the server's echo server, {} s per run. `rr`: \
         1-byte round trips on one TCP connection; `crr`: per transaction a new TCP \
         connection, a 1-byte request and reply, the server closing first; `udp`: 1-byte \
         datagrams by `sendto` from an unconnected socket, answered by `sendto`. Policies: \
         the server admits ingress and the client egress from/to {PEERS} ipBlock /32 peers \
         ({} addresses that are no pod, then the other pod) on {TCP_PORT}/TCP and \
         {UDP_PORT}/UDP. iptables ({}): the same peers in both pods' own namespaces, server \
         INPUT by source and client OUTPUT by destination: conntrack ESTABLISHED,RELATED \
         accept, one rule per peer and port (the other pod last), DROP. Before the first \
         measurement of each, a probe from the outsider pod checks that the server is closed \
         to it. The full agent attached: {}. Detections at their defaults: {}. \"Every guard \
         detection off\" sets each of them `off` in the agent's config. {foreign}\n\n\
         Run to run, in transactions/s:\n\n{}\n{program_costs}",
        table_note(),
        ctx.seconds,
        PEERS - 1,
        setup::iptables_version(),
        if programs.is_empty() { "none".to_string() } else { programs.join(", ") },
        detections.iter().map(|(id, mode)| format!("{id} {mode}")).collect::<Vec<_>>().join(", "),
        spread(&samples),
    );
    Ok(Section {
        id: "e2e",
        title: "End to end: TCP_RR, TCP_CRR and UDP request/reply under moat, iptables and no agent",
        columns: ["no agent", "configuration"],
        rows,
        method: format!(
            "Median of {ROUNDS} rounds; each round brings lab `{LAB}` up once per \
             configuration, in an order that rotates between rounds, and runs every mode"
        ),
        notes,
        table: None,
    })
}

const PROGRAM_TABLE: TableWords = TableWords {
    label: "mode",
    call: "transaction",
    intro: "Per program, full agent with the tenant floor only, by the kernel's own accounting \
            (`BPF_ENABLE_STATS`, one more run of each mode before the rounds, apart from the timed \
            ones; programs that ran less than once per thousand transactions are left out; full \
            names from `/proc/kallsyms`, … marks one the kernel cut at 15 characters). Both pods' programs count: a \
            transaction's packets pass the client's and the server's. The accounting itself adds \
            its clock reads to every run, and the rates of this run are lower for it:",
};

/// Each moat program's runs and run time per transaction of every mode, in the lab that is
/// up (the full agent, floor only): one run of each under `moat-lab __bench-prog-stats`.
fn program_costs(moat: &Path, seconds: u32) -> Result<String> {
    let mut costs = Vec::new();
    for mode in Mode::ALL {
        check_interrupt()?;
        let mut cmd = Command::new(lab_bin_beside(moat));
        cmd.args(["__bench-prog-stats", "--"]).arg(moat).args(["lab", "bench", "--name", LAB, "--from", CLIENT, "--to", SERVER]);
        cmd.args(["--port", &mode.port().to_string(), "--mode", mode.arg(), "--seconds", &seconds.to_string(), "-o", "json"]);
        eprintln!("$ {}", render(&cmd));
        let output = capture(&mut cmd)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            anyhow::bail!("`{}` failed ({}): {}", render(&cmd), output.status, stderr.trim());
        }
        // The accounting's JSON on stdout; the bench's own (its stdout) on stderr.
        let stats: Value = serde_json::from_slice(&output.stdout).with_context(|| format!("no JSON from `{}`", render(&cmd)))?;
        let transactions = stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
            .find_map(|bench| bench["ops"].as_u64())
            .with_context(|| format!("no \"ops\" from `moat lab bench` in {stderr:?}"))?;
        costs.extend(per_call(mode.arg(), transactions, &stats)?);
    }
    Ok(table(&costs, &PROGRAM_TABLE))
}

fn table_note() -> &'static str {
    "Rates are each run's fastest batch of transactions (500 round trips, 100 connections), \
     median over the rounds: the part of a run least disturbed by other work on this shared \
     machine, where a cost the datapath adds to every transaction still shows. Ratios are \
     configuration / no agent: 1.000 is no cost, 0.970 is the 3% the agent may cost."
}

fn up(moat: &Path, config: Config, files: &Files, guard_off: &Path) -> Result<Lab> {
    let guard_off = guard_off.display().to_string();
    let extra: Vec<&str> = match config {
        Config::NoAgent | Config::Iptables => vec!["--no-agent"],
        Config::Floor | Config::Policies => vec![],
        Config::DatapathFloor | Config::DatapathPolicies => vec!["--config", &guard_off],
    };
    let mut manifests = vec![files.base.clone()];
    if config.policies() {
        manifests.push(files.policies.clone());
    }
    Lab::up(moat, LAB, &manifests, &extra)
}

/// An agent config with every detection `off`.
fn write_guard_off(dir: &Path, detections: &[(String, String)]) -> Result<PathBuf> {
    let mut text = String::from("# cargo xtask bench --only e2e: every guard detection off\nguard:\n  detections:\n");
    for (id, _) in detections {
        text.push_str(&format!("    {id}: \"off\"\n"));
    }
    let path = dir.join("guard-off.yaml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The configurations' indices in round `round`: the order rotates by one each round.
fn order(round: usize) -> [usize; 6] {
    std::array::from_fn(|i| (i + round) % Config::ALL.len())
}

fn median(runs: &[Run], pick: fn(&Run) -> &Measurement) -> Result<Measurement> {
    let mut values: Vec<Measurement> = runs.iter().map(|run| pick(run).clone()).collect();
    crate::bench_run::median(&mut values).context("no measurements")
}

fn rows(samples: &Samples) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        let baseline = median(&samples[0][m], |run| &run.best)?;
        for (slot, config) in Config::ALL.into_iter().enumerate().skip(1) {
            let moat = median(&samples[slot][m], |run| &run.best)?;
            rows.push(Row { metric: format!("{}: {}", mode.label(), config.label()), baseline: baseline.clone(), moat });
        }
    }
    Ok(rows)
}

/// Per configuration and mode: the fastest batches' range over the rounds, and the median of
/// the whole-run means (which carry the machine's other load).
fn spread(samples: &Samples) -> String {
    let mut text = String::from(
        "| mode | configuration | fastest batch: lowest – highest run | whole-run mean (median run) | mean / no agent |\n|---|---|---:|---:|---:|\n",
    );
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        let base_mean = median(&samples[0][m], |run| &run.mean).map(|m| m.rate).unwrap_or(f64::NAN);
        for (slot, config) in Config::ALL.into_iter().enumerate() {
            let rates = samples[slot][m].iter().map(|run| run.best.rate);
            let (low, high) = rates.fold((f64::INFINITY, 0.0f64), |(low, high), rate| (low.min(rate), high.max(rate)));
            let mean = median(&samples[slot][m], |run| &run.mean).map(|m| m.rate).unwrap_or(f64::NAN);
            text.push_str(&format!(
                "| {} | {} | {low:.0} – {high:.0} | {mean:.0} | {:.3} |\n",
                mode.arg(),
                config.label(),
                mean / base_mean
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_takes_every_position() {
        for position in 0..Config::ALL.len() {
            let mut seen: Vec<usize> = (0..Config::ALL.len()).map(|round| order(round)[position]).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..Config::ALL.len()).collect::<Vec<_>>());
        }
    }
}
