//! `np-iptables`: TCP request/response between two lab pods when the server admits K peers,
//! enforced by moat (a NetworkPolicy of K ipBlock /32 peers) versus iptables (K ACCEPT rules
//! in the server pod's own network namespace), against no policy at all.
//!
//! iptables rules only ever go into the lab server pod's netns (`ip netns exec <pod netns>`),
//! never the host's; they are flushed when measured, and the netns goes with the lab.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::bench::{lab_bench, median, Context, Measurement, Row, Section, REPEATS};
use crate::util::{capture, check_interrupt, render, run, stdout_of, Lab};

const LAB: &str = "npbench";
const FROM: &str = "np/client";
const TO: &str = "np/server";
const OUTSIDER: &str = "np/outsider";
const PORT: u16 = 8080;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);
const SIZES: [usize; 3] = [10, 100, 1_000];

fn pod(name: &str, ip: Option<Ipv4Addr>) -> String {
    let status = ip.map(|ip| format!("status:\n  podIP: {ip}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: np\n  labels:\n    app: {name}\n\
         spec:\n  containers:\n    - name: c\n      image: x\n      ports:\n        - name: bench\n          \
         containerPort: {PORT}\n          protocol: TCP\n{status}---\n"
    )
}

/// The K allowed peers: K-1 addresses that are not pods, then the client (last).
fn peers(k: usize) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = (1..k as u32).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 251, 0, 0)) + i)).collect();
    out.push(CLIENT_IP);
    out
}

fn policy(k: usize) -> String {
    let mut text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-peers\n  namespace: np\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: server\n  policyTypes: [Ingress]\n  ingress:\n    \
         - ports:\n        - port: {PORT}\n      from:\n"
    );
    for peer in peers(k) {
        text.push_str(&format!("        - ipBlock: {{cidr: {peer}/32}}\n"));
    }
    text
}

fn ruleset(k: usize) -> String {
    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for peer in peers(k) {
        text.push_str(&format!("-A INPUT -s {peer}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT\n"));
    }
    text.push_str("-A INPUT -j DROP\nCOMMIT\n");
    text
}

const FLUSH: &str = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";

/// Loads a ruleset with iptables-restore inside `netns` (a lab pod's).
fn restore(netns: &str, rules: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-restore"]).stdin(Stdio::piped());
    let shown = render(&cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
    child.stdin.take().context("no stdin")?.write_all(rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Flushes the server pod's INPUT chain when dropped.
struct Rules<'a>(&'a str);

impl Drop for Rules<'_> {
    fn drop(&mut self) {
        if let Err(err) = restore(self.0, FLUSH) {
            eprintln!("warning: flushing iptables in {}: {err:#}", self.0);
        }
    }
}

/// `moat lab probe` from the outsider pod: must not be allowed while a policy is in force.
fn outsider_verdict(lab: &Lab) -> Result<String> {
    let mut cmd = lab.command();
    cmd.args(["probe", "--name", lab.name(), "--from", OUTSIDER, "--to", TO, "--port", &PORT.to_string(), "-o", "json"]);
    let output = capture(&mut cmd)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| format!("probe printed {text:?}"))?;
    Ok(value["results"][0]["verdict"].as_str().unwrap_or("?").to_string())
}

fn expect_blocked(lab: &Lab, what: &str) -> Result<()> {
    let verdict = outsider_verdict(lab)?;
    eprintln!("  outsider → server under {what}: {verdict}");
    if verdict != "deny" {
        bail!("{what}: the outsider pod still reaches the server ({verdict}); the policy is not in force");
    }
    Ok(())
}

fn server_netns(lab: &Lab) -> Result<String> {
    let text = stdout_of(lab.command().args(["status", "--name", lab.name(), "-o", "json"]))?;
    let value: serde_json::Value = serde_json::from_str(text.trim())?;
    value["pods"][TO]["netns"].as_str().map(String::from).context("no netns for the server in `moat lab status`")
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn iptables(ctx: &Context) -> Result<Section> {
    let dir = std::env::temp_dir().join(format!("moat-npbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(ctx, &dir);
    drop(std::fs::remove_dir_all(&dir));
    result
}

fn measure(ctx: &Context, dir: &Path) -> Result<Section> {
    let base_text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: np\n  labels:\n    tenant: np\n---\n{}{}{}",
        pod("client", Some(CLIENT_IP)),
        pod("server", None),
        pod("outsider", None)
    );
    let base = write(dir, "base.yaml", &base_text)?;
    let rr = |lab: &Lab| lab_bench(lab, FROM, TO, &PORT.to_string(), "rr", ctx.seconds);
    let version = stdout_of(Command::new("iptables").arg("-V")).unwrap_or_default();

    println!("\n== np-iptables: lab {LAB:?} without agent: no policy, then iptables");
    let lab = Lab::up(&ctx.moat, LAB, std::slice::from_ref(&base), &["--no-agent"])?;
    let netns = server_netns(&lab)?;
    let mut baseline = Vec::new();
    let mut with_iptables: Vec<Vec<Measurement>> = vec![Vec::new(); SIZES.len()];
    for round in 0..REPEATS {
        baseline.push(rr(&lab)?);
        for (slot, k) in SIZES.iter().enumerate() {
            check_interrupt()?;
            let _rules = Rules(&netns);
            restore(&netns, &ruleset(*k))?;
            if round == 0 {
                expect_blocked(&lab, &format!("iptables, {k} rules"))?;
            }
            with_iptables[slot].push(rr(&lab)?);
        }
    }

    println!("\n== np-iptables: moat attached: no policy, then a policy of K peers");
    run(lab.command().args(["agent", "start", "--name", LAB]))?;
    let mut moat_open = Vec::new();
    let mut with_moat: Vec<Vec<Measurement>> = vec![Vec::new(); SIZES.len()];
    for round in 0..REPEATS {
        apply(&lab, &[&base])?;
        moat_open.push(rr(&lab)?);
        for (slot, k) in SIZES.iter().enumerate() {
            let file = write(dir, &format!("policy-{k}.yaml"), &policy(*k))?;
            apply(&lab, &[&base, &file])?;
            if round == 0 {
                expect_blocked(&lab, &format!("moat, {k} peers"))?;
            }
            with_moat[slot].push(rr(&lab)?);
        }
    }
    drop(lab);

    let pick = |runs: &mut Vec<Measurement>| median(runs).context("no measurements");
    let baseline = pick(&mut baseline)?;
    let mut rows = vec![Row { metric: "moat attached, no policy".into(), baseline: baseline.clone(), moat: pick(&mut moat_open)? }];
    for (slot, k) in SIZES.iter().enumerate() {
        rows.push(Row { metric: format!("iptables, {k} ACCEPT rules"), baseline: baseline.clone(), moat: pick(&mut with_iptables[slot])? });
        rows.push(Row { metric: format!("moat, policy of {k} ipBlock peers"), baseline: baseline.clone(), moat: pick(&mut with_moat[slot])? });
    }
    let notes = format!(
        "Lab `{LAB}`: pods client, server and outsider in one namespace. iptables ({}): in the \
         server pod's netns only, INPUT = conntrack ESTABLISHED,RELATED accept, then one ACCEPT per \
         allowed peer (`-s <addr>/32 -p tcp --dport {PORT}`, the client last), then DROP. moat: a \
         NetworkPolicy on the server admitting the same K addresses as ipBlock /32 peers on port \
         {PORT}. Before measuring each K, a probe from the outsider pod checks that the server is \
         closed to it. `moat lab bench --mode rr` is 1-byte round trips on one TCP connection: \
         after the handshake both enforce through connection state (conntrack, moat's flow table), \
         so K only weighs on the first packet of each connection.\n",
        version.trim()
    );
    Ok(Section {
        id: "np-iptables",
        title: "NetworkPolicy: TCP request/response under moat versus iptables",
        columns: ["baseline (no policy, no program)", "subject"],
        rows,
        method: format!("Median of {REPEATS} runs each, cases interleaved within each of the two phases (without and with the agent), {} s per run", ctx.seconds),
        notes,
        table: None,
    })
}

/// `moat lab apply`, then time for the agent (polling every 250 ms) to publish the change.
fn apply(lab: &Lab, files: &[&Path]) -> Result<()> {
    let mut cmd = lab.command();
    cmd.args(["apply", "--name", lab.name()]);
    for file in files {
        cmd.arg("-f").arg(file);
    }
    run(&mut cmd)?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    Ok(())
}
