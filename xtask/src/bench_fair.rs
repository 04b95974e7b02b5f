//! `fairness`: what one tenant's flood costs the others. Pods of 1 or 3 "noisy" tenants make
//! connects to another tenant's pod as fast as they can, to distinct ports, while a pod of a
//! quiet tenant makes a few connects of its own. Under moat every one of them is denied at
//! connect() and reported; without an agent they reach the target and are refused by it.
//!
//! Per configuration: the flood's connect attempts per second (the baseline: the same flood
//! with no agent), whether every one of the quiet tenant's denies arrived as an event, what
//! the noisy tenants lost to their budgets, and the agent's CPU and memory meanwhile. The
//! agent runs with its default event budgets; the release build runs agent and flood.
//!
//! A second flood fills the flow table: a noisy pod sends UDP datagrams from 8 sockets to
//! every port of a pod of its own tenant (each a new allowed flow), against the same flood
//! with no agent; afterwards the quiet tenant must still open a connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::bench_run::{Context, Measurement, Row, Section};
use crate::bench_guard_agent::lab_agent_pid;
use crate::util::{check_interrupt, lab_bin_beside, stdout_of, Lab};

const LAB: &str = "fair";
const ROUNDS: usize = 3;
/// The most noisy tenants a configuration has; each has one pod.
const MAX_NOISY: usize = 3;
const NOISY_COUNTS: [usize; 2] = [1, MAX_NOISY];
/// The quiet tenant's denied connects during each flood, to distinct ports.
const QUIET_CONNECTS: u64 = 20;
const QUIET_FIRST_PORT: u16 = 20_000;
/// How long the quiet tenant's events may take to arrive once the flood has ended.
const ARRIVAL: Duration = Duration::from_secs(20);

/// What one flood measured.
struct Flood {
    /// Connect attempts per second, all noisy pods together.
    rate: f64,
    /// With the agent: its CPU (% of one CPU), VmRSS and VmHWM (MiB) over the flood.
    agent: Option<AgentUse>,
    /// With the agent: the quiet tenant's denies that arrived as events.
    quiet_arrived: Option<u64>,
    /// With the agent: events lost, by tenant, as `moat status` counts them.
    lost: BTreeMap<String, u64>,
}

#[derive(Clone, Copy)]
struct AgentUse {
    cpu_percent: f64,
    rss_mib: f64,
    peak_mib: f64,
}

pub fn fairness(ctx: &Context) -> Result<Section> {
    let moat = ctx.moat_release()?;
    let dir = std::env::temp_dir().join(format!("moat-fair-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(ctx, &moat, &dir);
    drop(std::fs::remove_dir_all(&dir));
    result
}

fn measure(ctx: &Context, moat: &Path, dir: &Path) -> Result<Section> {
    let manifests = dir.join("cluster.yaml");
    std::fs::write(&manifests, cluster_yaml()).with_context(|| format!("writing {}", manifests.display()))?;
    // [noisy count index][with agent]: one flood per round.
    let mut floods: [[Vec<Flood>; 2]; 2] = Default::default();
    for round in 0..ROUNDS {
        for (n, noisy) in NOISY_COUNTS.into_iter().enumerate() {
            // Alternate which goes first, so a machine getting busier does not favour one.
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for agent in order {
                check_interrupt()?;
                println!("\n== fairness: round {} of {ROUNDS}, {noisy} flooding tenant(s), {}", round + 1, if agent { "moat" } else { "no agent" });
                floods[n][usize::from(agent)].push(flood(ctx, moat, &manifests, noisy, agent)?);
            }
        }
    }
    let mut flow_floods: [Vec<FlowFlood>; 2] = Default::default();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for agent in order {
            check_interrupt()?;
            println!("\n== fairness: round {} of {ROUNDS}, flow-table flood, {}", round + 1, if agent { "moat" } else { "no agent" });
            flow_floods[usize::from(agent)].push(flow_flood(ctx, moat, &manifests, agent)?);
        }
    }
    let mut rows = Vec::new();
    let mut details = String::from(
        "| flooding tenants | round | connects/s, no agent | denied connects/s, moat | quiet tenant's denies reported | lost, by tenant | agent CPU | agent RSS (peak) |\n|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for (n, noisy) in NOISY_COUNTS.into_iter().enumerate() {
        let [without, with] = &floods[n];
        let rate = |floods: &[Flood]| -> Result<Measurement> {
            let mut values: Vec<Measurement> = floods.iter().map(|f| Measurement { rate: f.rate, unit: "connects/s".into() }).collect();
            crate::bench_run::median(&mut values).context("no floods measured")
        };
        rows.push(Row {
            metric: format!("{noisy} flooding tenant(s): connect attempts/s of the flood (median of {ROUNDS})"),
            baseline: rate(without)?,
            moat: rate(with)?,
        });
        for (round, (without, with)) in without.iter().zip(with).enumerate() {
            let lost = if with.lost.is_empty() {
                "none".to_string()
            } else {
                with.lost.iter().map(|(tenant, count)| format!("{tenant} {count}")).collect::<Vec<_>>().join(", ")
            };
            let usage = with.agent.map_or(("?".to_string(), "?".to_string()), |u| {
                (format!("{:.0} %", u.cpu_percent), format!("{:.0} MiB ({:.0} MiB)", u.rss_mib, u.peak_mib))
            });
            details.push_str(&format!(
                "| {noisy} | {} | {:.0} | {:.0} | {} of {QUIET_CONNECTS} | {lost} | {} | {} |\n",
                round + 1,
                without.rate,
                with.rate,
                with.quiet_arrived.unwrap_or(0),
                usage.0,
                usage.1,
            ));
        }
    }
    let new_flows = |floods: &[FlowFlood]| -> Result<Measurement> {
        let mut values: Vec<Measurement> = floods.iter().map(|f| Measurement { rate: f.rate, unit: "datagrams/s".into() }).collect();
        crate::bench_run::median(&mut values).context("no flow-table floods measured")
    };
    rows.push(Row {
        metric: format!("flow-table flood: UDP datagrams/s, each to a new port (a new flow) (median of {ROUNDS})"),
        baseline: new_flows(&flow_floods[0])?,
        moat: new_flows(&flow_floods[1])?,
    });
    details.push_str(
        "\n| flow-table flood, round | datagrams/s, no agent | datagrams/s, moat | `FLOWS` after (entries of capacity) | quiet tenant's new connection after |\n|---:|---:|---:|---:|---|\n",
    );
    for (round, (without, with)) in flow_floods[0].iter().zip(&flow_floods[1]).enumerate() {
        details.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} |\n",
            round + 1,
            without.rate,
            with.rate,
            with.flows.as_deref().unwrap_or("?"),
            with.quiet_after,
        ));
    }
    let short: Vec<String> = floods
        .iter()
        .flat_map(|[_, with]| with.iter())
        .filter(|flood| flood.quiet_arrived.unwrap_or(0) < QUIET_CONNECTS)
        .map(|flood| format!("{} of {QUIET_CONNECTS}", flood.quiet_arrived.unwrap_or(0)))
        .collect();
    let refused: Vec<&str> = flow_floods.iter().flatten().map(|f| f.quiet_after.as_str()).filter(|v| *v != "allow").collect();
    let short: Vec<String> = short.into_iter().chain(refused.iter().map(|v| format!("a new connection after the flow-table flood: {v}"))).collect();
    let verdict = if short.is_empty() {
        format!("The quiet tenant lost nothing: all {QUIET_CONNECTS} of its denies were reported in every flood, and it opened a new connection after every flow-table flood.")
    } else {
        format!("**The quiet tenant was hurt**: {}.", short.join("; "))
    };
    let notes = format!(
        "{verdict}\n\nLab `{LAB}`: tenant `quiet` (pod q/quiet), tenants `noisy1`–`noisy{MAX_NOISY}` (one pod \
         each) and tenant `target` (pod t/target). Each noisy pod runs `moat-lab __pod-burst \
         --protocol tcp` to the target, cycling over 60,000 ports, for {} s; meanwhile the quiet pod \
         makes {QUIET_CONNECTS} connects to the target on distinct ports. Under moat every connect is a \
         cross-tenant deny at connect() (EPERM, no packet) and an event; without an agent the SYN \
         reaches the target, which answers with a reset (ECONNREFUSED), so the baseline's connect \
         costs the kernel more than a denied one. The agent runs its default configuration (event \
         budgets: 1,000 denies/s per tenant and CPU, burst 1,000): a noisy tenant's excess is \
         dropped in the kernel and counted for it (\"lost\", from `moat status`). \"Reported\": the \
         quiet pod's denies among the events `moat observe --tenant quiet` printed (folded reports \
         count as their `count`). Agent CPU: user + system time over the flood, % of one CPU. \
         Flow-table flood: noisy1/noisy sends to every port of noisy1/sink from 8 UDP sockets for {} s \
         (`--protocol udp --sockets 8`), each datagram to a port not seen before a new flow; then \
         `moat lab probe` q/quiet → q/peer 80/TCP.\n\n{details}",
        ctx.seconds,
        ctx.seconds
    );
    Ok(Section {
        id: "fairness",
        title: "Fairness under a flood: denied connects and the flow table, one tenant against another",
        columns: ["no agent", "moat"],
        rows,
        method: format!(
            "Median of {ROUNDS} rounds; each round brings lab `{LAB}` up once per configuration (no agent, \
             moat; the order alternates between rounds), floods for {} s",
            ctx.seconds
        ),
        notes,
        table: None,
    })
}

fn flood(ctx: &Context, moat: &Path, manifests: &Path, noisy: usize, agent: bool) -> Result<Flood> {
    let extra: &[&str] = if agent { &[] } else { &["--no-agent"] };
    let lab = Lab::up(moat, LAB, &[manifests.to_path_buf()], extra)?;
    let status = lab_status(&lab)?;
    let target = status["pods"]["t/target"]["ipv4"].as_str().context("no IPv4 address for t/target in `moat lab status`")?.to_string();
    let observer = if agent { Some(Observer::start(moat, LAB, dir_of(manifests))?) } else { None };
    let pid = if agent { lab_agent_pid(moat, LAB)? } else { None };
    if agent && pid.is_none() {
        bail!("lab {LAB}: the agent is not running");
    }
    // `moat observe` connects asynchronously: give it a moment before anything is denied.
    std::thread::sleep(Duration::from_millis(500));
    let before = pid.map(agent_ticks);
    let started = Instant::now();
    let seconds = ctx.seconds.to_string();
    let flooders: Vec<Child> = (1..=noisy)
        .map(|i| {
            let mut cmd = burst(moat, &lab, &format!("noisy{i}/noisy"), &target, 1024, 60_000);
            cmd.args(["--count", &u64::MAX.to_string(), "--seconds", &seconds]);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting the flood of noisy{i}"))
        })
        .collect::<Result<_>>()?;
    // The quiet tenant's connects, once the flood is under way.
    std::thread::sleep(Duration::from_secs(1).min(Duration::from_secs(u64::from(ctx.seconds)) / 2));
    let mut quiet = burst(moat, &lab, "q/quiet", &target, QUIET_FIRST_PORT, QUIET_CONNECTS as u16);
    quiet.args(["--count", &QUIET_CONNECTS.to_string()]);
    let quiet = quiet.output().context("running the quiet pod's connects")?;
    if !quiet.status.success() {
        bail!("the quiet pod's connects failed: {}", String::from_utf8_lossy(&quiet.stderr));
    }
    let mut attempts = 0u64;
    for (i, child) in flooders.into_iter().enumerate() {
        let output = child.wait_with_output().context("waiting for a flood")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("the flood of noisy{} failed: {text}{}", i + 1, String::from_utf8_lossy(&output.stderr));
        }
        let result: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).with_context(|| format!("flood printed {text:?}"))?;
        attempts += result["sent"].as_u64().unwrap_or(0) + result["failed"].as_u64().unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let agent_use = match (pid, before) {
        (Some(pid), Some(before)) => Some(agent_use(pid, before, elapsed)),
        _ => None,
    };
    let quiet_arrived = observer.as_ref().map(Observer::wait_for_quiet);
    let lost = if agent { losses(moat)? } else { BTreeMap::new() };
    let rate = attempts as f64 / f64::from(ctx.seconds);
    eprintln!(
        "  {attempts} connects ({rate:.0}/s){}",
        quiet_arrived.map(|n| format!("; quiet tenant's denies reported: {n} of {QUIET_CONNECTS}; lost: {lost:?}")).unwrap_or_default()
    );
    drop(observer);
    drop(lab);
    Ok(Flood { rate, agent: agent_use, quiet_arrived, lost })
}

struct FlowFlood {
    /// Datagrams per second (each to a new port: a new flow).
    rate: f64,
    /// With the agent: `FLOWS` entries of capacity after the flood.
    flows: Option<String>,
    /// The quiet tenant's new connection after the flood: `allow`, `deny` or what went wrong.
    quiet_after: String,
}

fn flow_flood(ctx: &Context, moat: &Path, manifests: &Path, agent: bool) -> Result<FlowFlood> {
    let extra: &[&str] = if agent { &[] } else { &["--no-agent"] };
    let lab = Lab::up(moat, LAB, &[manifests.to_path_buf()], extra)?;
    let status = lab_status(&lab)?;
    let sink = status["pods"]["noisy1/sink"]["ipv4"].as_str().context("no IPv4 address for noisy1/sink in `moat lab status`")?.to_string();
    let mut cmd = lab.command();
    cmd.args(["exec", "--name", lab.name(), "noisy1/noisy", "--"]).arg(lab_bin_beside(moat));
    cmd.args(["__pod-burst", "--protocol", "udp", "--sockets", "8", "--to", &sink, "--port", "1", "--ports", "65535"]);
    cmd.args(["--count", &u64::MAX.to_string(), "--seconds", &ctx.seconds.to_string()]);
    let output = cmd.output().context("running the flow-table flood")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the flow-table flood failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let result: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).with_context(|| format!("flood printed {text:?}"))?;
    let rate = result["sent"].as_u64().unwrap_or(0) as f64 / f64::from(ctx.seconds);
    let flows = if agent { Some(flows_fill(moat)?) } else { None };
    let quiet_after = probe(&lab, "q/quiet", "q/peer", 80)?;
    eprintln!("  {rate:.0} datagrams/s; FLOWS {}; quiet tenant's new connection: {quiet_after}", flows.as_deref().unwrap_or("-"));
    Ok(FlowFlood { rate, flows, quiet_after })
}

/// `FLOWS` entries and capacity, from the agent's status.
fn flows_fill(moat: &Path) -> Result<String> {
    let text = stdout_of(Command::new(moat).args(["status", "--lab", LAB, "-o", "json"]))?;
    let status: Value = serde_json::from_str(text.trim()).context("`moat status -o json` printed no JSON")?;
    let flows = status["kernel"]["maps"].as_array().into_iter().flatten().find(|m| m["map"] == "FLOWS").context("`moat status` lists no FLOWS map")?;
    Ok(format!("{} of {}", flows["entries"], flows["capacity"]))
}

/// `moat lab probe FROM → TO PORT/TCP`: its verdict.
fn probe(lab: &Lab, from: &str, to: &str, port: u16) -> Result<String> {
    let text = stdout_of(lab.command().args(["probe", "--name", lab.name(), "--from", from, "--to", to, "--port", &port.to_string(), "-o", "json"]))?;
    let value: Value = serde_json::from_str(text.trim()).with_context(|| format!("probe printed {text:?}"))?;
    Ok(value["results"][0]["verdict"].as_str().unwrap_or("?").to_string())
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `moat lab exec POD -- moat-lab __pod-burst --protocol tcp --to TARGET --port FIRST --ports N`.
fn burst(moat: &Path, lab: &Lab, pod: &str, target: &str, first: u16, ports: u16) -> Command {
    let mut cmd = lab.command();
    cmd.args(["exec", "--name", lab.name(), pod, "--"]).arg(lab_bin_beside(moat));
    cmd.args(["__pod-burst", "--protocol", "tcp", "--to", target, "--port", &first.to_string(), "--ports", &ports.to_string()]);
    cmd
}

fn lab_status(lab: &Lab) -> Result<Value> {
    let text = stdout_of(lab.command().args(["status", "--name", lab.name(), "-o", "json"]))?;
    serde_json::from_str(text.trim()).context("`moat lab status -o json` printed no JSON")
}

/// Events lost, by tenant, from the agent's status (kernel budgets and the userspace buffer).
fn losses(moat: &Path) -> Result<BTreeMap<String, u64>> {
    let text = stdout_of(Command::new(moat).args(["status", "--lab", LAB, "-o", "json"]))?;
    let status: Value = serde_json::from_str(text.trim()).context("`moat status -o json` printed no JSON")?;
    let mut lost = BTreeMap::new();
    for loss in status["events_lost"]["by_tenant"].as_array().into_iter().flatten() {
        let tenant = loss["tenant"].as_str().unwrap_or("?").to_string();
        *lost.entry(tenant).or_default() += loss["count"].as_u64().unwrap_or(0);
    }
    Ok(lost)
}

/// The agent's user + system CPU time, in clock ticks.
fn agent_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn agent_use(pid: u32, ticks_before: u64, seconds: f64) -> AgentUse {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_percent = agent_ticks(pid).saturating_sub(ticks_before) as f64 / hz / seconds.max(0.001) * 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| -> f64 {
        let kib: f64 = status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
        kib / 1024.0
    };
    AgentUse { cpu_percent, rss_mib: mib("VmRSS:"), peak_mib: mib("VmHWM:") }
}

/// `moat observe --lab fair --tenant quiet -o json`, its lines in a file; killed on drop.
struct Observer {
    child: Child,
    out: PathBuf,
}

impl Observer {
    fn start(moat: &Path, lab: &str, dir: PathBuf) -> Result<Observer> {
        let out = dir.join("observe.jsonl");
        let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let child = Command::new(moat)
            .args(["observe", "--lab", lab, "--tenant", "quiet", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moat observe")?;
        Ok(Observer { child, out })
    }

    /// The quiet pod's denies reported so far (a folded report counts as its `count`).
    fn quiet_denies(&self) -> u64 {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["type"] == "flow" && event["src"]["pod"] == "quiet" && event["verdict"] == "deny")
            .map(|event| event["count"].as_u64().unwrap_or(1))
            .sum()
    }

    /// Waits until all the quiet pod's denies arrived, or `ARRIVAL` passed; returns how many.
    fn wait_for_quiet(&self) -> u64 {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let seen = self.quiet_denies();
            if seen >= QUIET_CONNECTS || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_yaml() -> String {
    let mut text = String::new();
    let mut add = |namespace: &str, tenant: &str, name: &str| {
        text.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    tenant: {tenant}\n---\n"));
        text.push_str(&pod(namespace, name));
    };
    add("q", "quiet", "quiet");
    add("t", "target", "target");
    for i in 1..=MAX_NOISY {
        add(&format!("noisy{i}"), &format!("noisy{i}"), "noisy");
    }
    // Pods of tenants already declared: the quiet tenant's peer, the flow-table flood's sink.
    text.push_str(&pod("q", "peer"));
    text.push_str(&pod("noisy1", "sink"));
    text
}

fn pod(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: {name}\n\
         spec:\n  containers:\n    - name: c\n      image: x\n      ports:\n        - {{containerPort: 80, protocol: TCP}}\n---\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_has_a_pod_per_tenant_and_no_two_tenants_alike() {
        let text = cluster_yaml();
        assert_eq!(text.matches("kind: Pod").count(), 4 + MAX_NOISY);
        assert!(text.contains("name: peer\n  namespace: q\n") && text.contains("name: sink\n  namespace: noisy1\n"));
        let mut tenants: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("tenant: ")).collect();
        let all = tenants.len();
        tenants.sort_unstable();
        tenants.dedup();
        assert_eq!(tenants.len(), all, "every namespace its own tenant");
    }
}
