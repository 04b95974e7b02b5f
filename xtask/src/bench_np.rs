//! NetworkPolicy sections of `cargo xtask bench` that run the agent's hidden benchmark
//! subcommands: `np-datapath` (BPF_PROG_TEST_RUN per-packet cost) and `np-compile`.

use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::bench_run::{Context, Measurement, Row, Section};
use crate::util::{check_interrupt, render, stdout_of};

/// (NetworkPolicies, ClusterNetworkPolicies) per run. Each ClusterNetworkPolicy has one rule
/// on a port of its own, so 1,000 of them are 1,000 rules over 1,000 ports — about 800,000
/// `CNP_RULES` entries on this synthetic cluster, within the map's 2^20.
const DATAPATH_POLICIES: [(usize, usize); 5] = [(10, 0), (1_000, 0), (10_000, 0), (1_000, 100), (1_000, 1_000)];
const DATAPATH_ROUNDS: u32 = 5;
const DATAPATH_PACKETS: u32 = 5_000;
const COMPILE_PODS: usize = 10_000;
const COMPILE_POLICIES: [usize; 3] = [0, 500, 5_000];
const COMPILE_REPEATS: usize = 3;

/// Runs a `moat` benchmark subcommand and parses the JSON object it prints last.
fn json_of(cmd: &mut Command) -> Result<Value> {
    check_interrupt()?;
    eprintln!("$ {}", render(cmd));
    let text = stdout_of(cmd)?;
    let line = text.lines().rev().find(|line| line.trim_start().starts_with('{')).unwrap_or(&text);
    serde_json::from_str(line.trim()).with_context(|| format!("no JSON object in {text:?}"))
}

fn number(value: &Value, path: &[&str]) -> Result<f64> {
    let mut node = value;
    for key in path {
        node = &node[*key];
    }
    node.as_f64().with_context(|| format!("no number at {} in {value}", path.join(".")))
}

fn ns(value: f64) -> Measurement {
    Measurement { rate: value, unit: "ns".into() }
}

/// Per-packet cost of `moat_egress`/`moat_ingress` against `moat_noop` (returns 1), with the
/// compiled state of a synthetic cluster of 2,000 pods and N NetworkPolicies.
pub fn datapath(ctx: &Context) -> Result<Section> {
    let lab = ctx.lab_release()?;
    let mut rows = Vec::new();
    let mut notes = String::from(
        "| policies | POLICY_RULES entries (this node) | CNP_RULES entries | egress case | ingress case | cgroup id the programs saw (own) |\n|---:|---:|---:|---|---|---|\n",
    );
    for (network_policies, cluster_policies) in DATAPATH_POLICIES {
        let policies = if cluster_policies == 0 {
            network_policies.to_string()
        } else {
            format!("{network_policies} + {cluster_policies} ClusterNetworkPolicies")
        };
        println!("\n== np-datapath: {policies} policies");
        let value = json_of(
            Command::new(&lab)
                .args(["__bench-datapath", "--policies", &network_policies.to_string()])
                .args(["--cluster-policies", &cluster_policies.to_string()])
                .args(["--packets", &DATAPATH_PACKETS.to_string(), "--rounds", &DATAPATH_ROUNDS.to_string()]),
        )?;
        let cases = [
            ("established", "established flow"),
            ("new_flow", "new flow, verdict cached (same peer and port as an earlier flow)"),
            ("new_flow_decided", "new flow, decided in full (endpoint and policy lookups)"),
            ("redecided", "established flow's next packet after a change (re-decided in full, no insert)"),
        ];
        for (case, label) in cases {
            for direction in ["egress", "ingress"] {
                rows.push(Row {
                    metric: format!("{policies} policies: {direction}, {label}"),
                    baseline: ns(number(&value, &[case, "noop"])?),
                    moat: ns(number(&value, &[case, direction])?),
                });
            }
        }
        let echo_reason = value["tc"]["echo_reason"].as_str().unwrap_or("?");
        for (key, label) in [("tcp", "TCP, passed on".to_string()), ("echo_request", format!("ICMP echo request ({echo_reason})"))] {
            rows.push(Row {
                metric: format!("{policies} policies: tc ingress (`moat_icmp_ingress`), {label}"),
                baseline: ns(number(&value, &["established", "noop"])?),
                moat: ns(number(&value, &["tc", key])?),
            });
        }
        let case = |name: &str| {
            let c = &value[name];
            format!("{} → {}:{} ({})", c["local"].as_str().unwrap_or("?"), c["remote"].as_str().unwrap_or("?"), c["port"], c["reason"].as_str().unwrap_or("?"))
        };
        notes.push_str(&format!(
            "| {policies} | {} | {} | {} | {} | {} ({}) |\n",
            value["rule_entries"],
            value["cluster_rule_entries"],
            case("egress_case"),
            case("ingress_case").replace(" → ", " ← "),
            value["cgroup_seen"],
            value["own_cgroup"],
        ));
    }
    notes.push_str(
        "\nns per packet from the kernel's own `duration` of BPF_PROG_TEST_RUN. Established: one \
         run with `repeat` = 5,000 on an ACK of a tracked flow. New flow: 5,000 SYNs, each from a \
         fresh source port and run once, so each misses the flow table and is then tracked; \
         \"verdict cached\": to the same peer and port as the flows before it, so the per-CPU \
         verdict cache holds its verdict (as for a client's next connection to a service, or \
         the SYN after its connect()); \"decided in full\": the bench writes a new generation \
         before each SYN (as an agent applying a change does, outside the timed run), so no \
         cached verdict applies and the packet is decided against the endpoint and policy \
         entries. Re-decided: the established flows' next packet after a new generation \
         (written before each, outside the timed run): the entry is found stale, the packet \
         decided in full and the entry renewed in place — a decision without the flow-table \
         insert a new flow pays. The baseline runs the same one-shot calls, so both include \
         the test-run timer's fixed cost. The programs run in the agent's process \
         context, and the test-run skb's dummy socket is charged to that process's cgroup, so \
         `bpf_skb_cgroup_id` returns the benchmark's own cgroup id (not 0): the synthetic state \
         maps both that id and 0 to the local pod, and the table shows which one the programs \
         saw (from the flow-table key). With ClusterNetworkPolicies: each selects every pod, \
         alternately Admin and Baseline, with a `Pass` from every namespace on a port of its \
         own (the last on every port), so every verdict stays NetworkPolicy's while every new \
         flow decided in full does the three `CNP_RULES` lookups (plus the `CNP_SUBJECTS` one). \
         tc ingress: `moat_icmp_ingress` as on a pod's \
         interface, `repeat` = 5,000, on the ingress case's ACK (not ICMP: one header load, then \
         passed on) and on an ICMP echo request between the same two pods (the first run \
         decides it, the rest hit its flow entry if allowed, a denied one is reported every \
         time); the baseline column is the same round's cgroup_skb `moat_noop`, for scale.\n",
    );
    Ok(Section {
        id: "np-datapath",
        title: "NetworkPolicy: per-packet cost of the verdict programs (BPF_PROG_TEST_RUN)",
        columns: ["baseline (`moat_noop`, returns 1)", "moat"],
        rows,
        method: format!(
            "Median of {DATAPATH_ROUNDS} rounds, each measuring baseline and moat back to back; \
             2,000 pods in 40 namespaces (8 tenants); policies of six shapes (default deny, \
             pod selector, namespace+pod selector on a named port, ipBlock with except, egress \
             to databases and DNS, port range from selected namespaces)"
        ),
        notes,
        table: None,
    })
}

/// Compile time of 10,000 pods with 5,000 policies, against 0 and 500 policies.
pub fn compile(ctx: &Context) -> Result<Section> {
    let lab = ctx.lab_release()?;
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); COMPILE_POLICIES.len()];
    for repeat in 0..COMPILE_REPEATS {
        for (slot, policies) in COMPILE_POLICIES.iter().enumerate() {
            println!("\n== np-compile: run {} of {COMPILE_REPEATS}, {policies} policies", repeat + 1);
            runs[slot].push(json_of(
                Command::new(&lab)
                    .args(["__bench-compile", "--pods", &COMPILE_PODS.to_string()])
                    .args(["--policies", &policies.to_string()]),
            )?);
        }
    }
    let median_run = |slot: usize, key: &str| -> Result<Value> {
        let mut values = runs[slot].clone();
        values.sort_by(|a, b| a[key].as_f64().unwrap_or(0.0).total_cmp(&b[key].as_f64().unwrap_or(0.0)));
        values.get(values.len().saturating_sub(1) / 2).cloned().context("no runs")
    };
    let seconds = |value: &Value, key: &str| -> Result<Measurement> {
        Ok(Measurement { rate: number(value, &[key])?, unit: "s".into() })
    };
    let mut rows = Vec::new();
    let mut notes = String::from(
        "| policies | node scope (110 local pods): entries | cluster scope: entries | policy sets | address ranges | peak RSS |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    let base_node = median_run(0, "node_seconds")?;
    let base_cluster = median_run(0, "cluster_seconds")?;
    for (slot, policies) in COMPILE_POLICIES.iter().enumerate() {
        let node = median_run(slot, "node_seconds")?;
        let cluster = median_run(slot, "cluster_seconds")?;
        if slot > 0 {
            rows.push(Row {
                metric: format!("{policies} policies, node scope (agent)"),
                baseline: seconds(&base_node, "node_seconds")?,
                moat: seconds(&node, "node_seconds")?,
            });
            rows.push(Row {
                metric: format!("{policies} policies, cluster scope (explain)"),
                baseline: seconds(&base_cluster, "cluster_seconds")?,
                moat: seconds(&cluster, "cluster_seconds")?,
            });
        }
        notes.push_str(&format!(
            "| {policies} | {} | {} | {} | {} | {:.0} MiB |\n",
            node["node_rule_entries"],
            cluster["cluster_rule_entries"],
            cluster["policy_sets"],
            cluster["networks"],
            number(&cluster, &["peak_rss_kib"]).unwrap_or(0.0) / 1024.0,
        ));
    }
    notes.push_str(
        "\nEach run is its own process (`moat-lab __bench-compile`, release build): the synthetic \
         cluster is built untimed, then compiled for a node holding 110 of the pods (what the \
         agent writes to the kernel) and for the whole cluster (what `moat explain` evaluates). \
         Peak RSS is the process's VmHWM after both compiles.\n",
    );
    Ok(Section {
        id: "np-compile",
        title: "NetworkPolicy: compiling 10,000 pods and 5,000 policies",
        columns: ["baseline (0 policies)", "with policies"],
        rows,
        method: format!(
            "Median of {COMPILE_REPEATS} runs each, configurations interleaved; 10,000 pods in \
             100 namespaces (20 tenants), policies of six shapes"
        ),
        notes,
        table: None,
    })
}
