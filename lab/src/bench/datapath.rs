//! `moat-lab __bench-datapath`: ns per packet of `moat_egress` and `moat_ingress` under
//! BPF_PROG_TEST_RUN, with the maps holding the compiled state of a synthetic cluster with N
//! NetworkPolicies, against `moat_noop` (returns 1) measured in the same rounds; and of the tc
//! program `moat_icmp_ingress` on a TCP packet (passed on after one header load) and on an
//! ICMP echo request to the local pod.
//!
//! The real object is loaded into a private pin directory, `/sys/fs/bpf/moat/bench-<pid>`,
//! removed on the way out whatever happens; nothing is attached to any cgroup (`harness`).
//! The synthetic state maps both this process's cgroup id and 0 to the local pod, and the run
//! reports which one the programs saw (from the flow table).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::path::PathBuf;

use aya::maps::{Array, MapData};
use aya::Ebpf;
use moat_common::flow_table::FlowSlot;
use moat_common::verdict::{LocalEnd, Peer, Reason};
use moat_common::{IPPROTO_ICMP, IPPROTO_TCP};
use serde_json::{json, Value};

use super::harness::{own_cgroup_id, test_run, GenerationBump, Loaded};
use super::synth::{self, Shape};
use super::testrun::{self, echo_request_frame, tcp_frame, TCP_ACK, TCP_SYN};
use super::{median, BenchError};
use moat_agent::compiler::{compile, mapped, Desired};
use moat_agent::config::Config;
use moat_agent::kernel::tc;
use moat_agent::model::cnp::ClusterNetworkPolicy;
use moat_agent::node::cgroups::{PodCgroups, PodRef};

#[derive(clap::Args, Debug)]
pub struct DatapathArgs {
    /// NetworkPolicies in the synthetic cluster.
    #[arg(long)]
    pub policies: usize,
    /// ClusterNetworkPolicies, every one selecting every pod (`cluster_policies`).
    #[arg(long, default_value_t = 0)]
    pub cluster_policies: usize,
    #[arg(long, default_value_t = 2_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 50)]
    pub pods_per_namespace: usize,
    /// Packets per measurement: the repeat count for established flows, the number of
    /// distinct new flows (one test run each) for new flows.
    #[arg(long, default_value_t = 5_000)]
    pub packets: u32,
    /// Rounds; each measures every case once, baseline first. Medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// bpffs mount.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// One end of a test packet's flow as the programs see it.
struct Flow {
    local: Ipv4Addr,
    remote: Ipv4Addr,
    port: u16,
    reason: Reason,
}

pub fn run(args: DatapathArgs) -> Result<(), BenchError> {
    let shape = Shape { pods: args.pods, pods_per_namespace: args.pods_per_namespace, policies: args.policies };
    let mut cluster = synth::cluster(shape)?;
    add_cluster_policies(&mut cluster, args.cluster_policies)?;
    let local_key = synth::pod_key(0, 0);
    let own_cgroup = own_cgroup_id()?;
    let cgroups: PodCgroups =
        [(0, PodRef::Key(local_key.clone())), (own_cgroup, PodRef::Key(local_key.clone()))].into();
    let desired = compile(&cluster, &Config::default(), &cgroups)?;
    let local_ip = v4(cluster.pods.get(&local_key).and_then(|pod| pod.ips.first()))?;
    let egress = find_flow(&desired, &cluster, local_ip, own_cgroup, LocalEnd::Source, &[5432, 53, 8080])?;
    let ingress = find_flow(&desired, &cluster, local_ip, own_cgroup, LocalEnd::Destination, &[8080, 30000, 8080])?;

    let mut loaded = Loaded::new(&args.bpffs, &format!("bench-{}", std::process::id()))?;
    let stats = loaded.maps.apply(&Desired::default(), &desired)?;
    let noop = loaded.skb_program("moat_noop")?;
    let egress_fd = loaded.skb_program("moat_egress")?;
    let ingress_fd = loaded.skb_program("moat_ingress")?;
    let tc_fd = loaded.tc_program()?;
    // The tc program decides an echo request by both addresses, as the source's node would.
    let echo = echo_request_frame(ingress.remote, ingress.local, 4242);
    let (echo_src, echo_dst) = (desired.remote_peer(&mapped(IpAddr::V4(ingress.remote))), desired.remote_peer(&mapped(IpAddr::V4(ingress.local))));
    let tier_sets = desired.cluster_subjects.get(&own_cgroup).copied().unwrap_or_default();
    let echo_reason = desired.decide_at(echo_src, echo_dst, IPPROTO_ICMP, 0, LocalEnd::Destination, tier_sets.ingress);
    let echo_retval = if echo_reason.is_allow() { TC_NEXT } else { TC_DROP };

    // Established: one SYN opens the flow, then ACKs of it are measured.
    let egress_syn = tcp_frame(egress.local, ESTABLISHED_PORT, egress.remote, egress.port, TCP_SYN);
    let egress_ack = tcp_frame(egress.local, ESTABLISHED_PORT, egress.remote, egress.port, TCP_ACK);
    let ingress_syn = tcp_frame(ingress.remote, ESTABLISHED_PORT + 1, ingress.local, ingress.port, TCP_SYN);
    let ingress_ack = tcp_frame(ingress.remote, ESTABLISHED_PORT + 1, ingress.local, ingress.port, TCP_ACK);
    expect_pass("moat_egress", "opening SYN", test_run("moat_egress", egress_fd, &egress_syn, 1)?)?;
    expect_pass("moat_ingress", "opening SYN", test_run("moat_ingress", ingress_fd, &ingress_syn, 1)?)?;
    let cgroup_seen = cgroup_seen(&mut loaded.ebpf, &mapped(IpAddr::V4(egress.remote)))?;

    // New flows need fresh source ports: every one must miss the flow table.
    let new_flows = 2 * u64::from(args.rounds) * u64::from(args.packets);
    if new_flows > u64::from(ESTABLISHED_PORT - FIRST_PORT) {
        return Err(BenchError::Setup(format!("{new_flows} new flows need more source ports than there are; lower --packets or --rounds")));
    }
    let mut generation = loaded.generation_bump()?;
    let fds = Programs { noop, egress: egress_fd, ingress: ingress_fd };
    // Per case, the noop, egress and ingress programs' samples.
    let mut established: [Vec<f64>; 3] = Default::default();
    let mut cached: [Vec<f64>; 3] = Default::default();
    let mut decided: [Vec<f64>; 3] = Default::default();
    let mut redecided: [Vec<f64>; 3] = Default::default();
    let mut tc_samples: [Vec<f64>; 2] = Default::default();
    let mut next_port = FIRST_PORT;
    for _ in 0..args.rounds {
        let cases = [(noop, &egress_ack, "moat_noop"), (egress_fd, &egress_ack, "moat_egress"), (ingress_fd, &ingress_ack, "moat_ingress")];
        for (slot, (fd, packet, name)) in cases.into_iter().enumerate() {
            let outcome = test_run(name, fd, packet, args.packets)?;
            expect_pass(name, "established", outcome)?;
            established[slot].push(f64::from(outcome.duration_ns));
        }
        for (slot, packet, case, retval) in [(0, &ingress_ack, "TCP", TC_NEXT), (1, &echo, "echo request", echo_retval)] {
            let outcome = test_run(tc::PROGRAM, tc_fd, packet, args.packets)?;
            expect(tc::PROGRAM, case, outcome, retval)?;
            tc_samples[slot].push(f64::from(outcome.duration_ns));
        }
        // The same peer and port as earlier flows: the verdict comes from the cache.
        push(&mut cached, new_flow_round(&fds, &egress, &ingress, &mut next_port, args.packets, None)?);
        // A new generation before each: decided in full, against the policy entries.
        push(&mut decided, new_flow_round(&fds, &egress, &ingress, &mut next_port, args.packets, Some(&mut generation))?);
        // The established flows' next packet after a change: re-decided, renewed in place.
        push(&mut redecided, redecided_round(&fds, [&egress_ack, &ingress_ack], args.packets, &mut generation)?);
    }
    let medians = |samples: [Vec<f64>; 3]| samples.map(|mut values| median(&mut values).unwrap_or(f64::NAN));
    let triple = |[noop, egress, ingress]: [f64; 3]| json!({"noop": noop, "egress": egress, "ingress": ingress});
    let [tc_tcp, tc_echo] = tc_samples.map(|mut values| median(&mut values).unwrap_or(f64::NAN));
    let out = json!({
        "policies": cluster.network_policies.len(),
        "cluster_policies": cluster.cluster_network_policies.len(),
        "cluster_rule_entries": desired.cluster_rules.len(),
        "pods": cluster.pods.len(),
        "rule_entries": desired.policy_rules.len(),
        "map_writes": stats.writes,
        "cgroup_seen": cgroup_seen,
        "own_cgroup": own_cgroup,
        "packets": args.packets,
        "rounds": args.rounds,
        "egress_case": describe(&egress),
        "ingress_case": describe(&ingress),
        "established": triple(medians(established)),
        "new_flow": triple(medians(cached)),
        "new_flow_decided": triple(medians(decided)),
        "redecided": triple(medians(redecided)),
        "tc": {"tcp": tc_tcp, "echo_request": tc_echo, "echo_reason": echo_reason.name()},
        "unit": "ns/packet",
    });
    println!("{out}");
    Ok(())
}

/// New flows take source ports from here up; the established flows use the two from
/// `ESTABLISHED_PORT`.
const FIRST_PORT: u16 = 1024;
const ESTABLISHED_PORT: u16 = 65000;

struct Programs {
    noop: RawFd,
    egress: RawFd,
    ingress: RawFd,
}

fn push(samples: &mut [Vec<f64>; 3], values: [f64; 3]) {
    for (slot, value) in values.into_iter().enumerate() {
        samples[slot].push(value);
    }
}

/// Mean ns of the established flows' next packet after a new generation (bumped before
/// each, outside the timed run): the flow entry is found stale, the packet decided in full
/// and the entry renewed in place, with no insert. `acks`: the egress and ingress flows'.
fn redecided_round(fds: &Programs, acks: [&[u8]; 2], packets: u32, generation: &mut GenerationBump) -> Result<[f64; 3], BenchError> {
    let mut sums = [0u64; 3];
    for _ in 0..packets {
        generation.bump()?;
        let runs = [(fds.noop, acks[0], "moat_noop"), (fds.egress, acks[0], "moat_egress"), (fds.ingress, acks[1], "moat_ingress")];
        for (slot, (fd, packet, name)) in runs.into_iter().enumerate() {
            let outcome = test_run(name, fd, packet, 1)?;
            expect_pass(name, "re-decided", outcome)?;
            sums[slot] += u64::from(outcome.duration_ns);
        }
    }
    Ok(sums.map(|sum| sum as f64 / f64::from(packets.max(1))))
}

/// Mean ns of `packets` new flows (a SYN from a fresh source port, one test run each) for
/// the noop, egress and ingress programs. With `generation`, the generation is bumped
/// before each, so no cached verdict applies and each is decided in full.
fn new_flow_round(fds: &Programs, egress: &Flow, ingress: &Flow, next_port: &mut u16, packets: u32, mut generation: Option<&mut GenerationBump>) -> Result<[f64; 3], BenchError> {
    let mut sums = [0u64; 3];
    for _ in 0..packets {
        let port = *next_port;
        *next_port += 1;
        if let Some(generation) = generation.as_mut() {
            generation.bump()?;
        }
        let runs = [
            (fds.noop, tcp_frame(egress.local, port, egress.remote, egress.port, TCP_SYN), "moat_noop"),
            (fds.egress, tcp_frame(egress.local, port, egress.remote, egress.port, TCP_SYN), "moat_egress"),
            (fds.ingress, tcp_frame(ingress.remote, port, ingress.local, ingress.port, TCP_SYN), "moat_ingress"),
        ];
        for (slot, (fd, packet, name)) in runs.iter().enumerate() {
            let outcome = test_run(name, *fd, packet, 1)?;
            expect_pass(name, "new flow", outcome)?;
            sums[slot] += u64::from(outcome.duration_ns);
        }
    }
    Ok(sums.map(|sum| sum as f64 / f64::from(packets.max(1))))
}

fn describe(flow: &Flow) -> Value {
    json!({"local": flow.local.to_string(), "remote": flow.remote.to_string(), "port": flow.port, "reason": flow.reason.name()})
}

fn v4(ip: Option<&IpAddr>) -> Result<Ipv4Addr, BenchError> {
    match ip {
        Some(IpAddr::V4(v4)) => Ok(*v4),
        _ => Err(BenchError::Setup("the local pod has no IPv4 address".into())),
    }
}

/// A peer and port whose new flow the local pod's policy allows (so the packet walks the
/// whole verdict, floor and policy lookups, and is then tracked), found with the same
/// decision code the programs run.
fn find_flow(desired: &Desired, cluster: &moat_agent::model::Cluster, local_ip: Ipv4Addr, cgroup: u64, end: LocalEnd, ports: &[u16]) -> Result<Flow, BenchError> {
    let local = Peer::local(desired.local.get(&cgroup).copied());
    let tier_sets = desired.cluster_subjects.get(&cgroup).copied().unwrap_or_default();
    let mut fallback = None;
    for pod in cluster.pods.values() {
        let Some(IpAddr::V4(remote_ip)) = pod.ips.first().copied() else { continue };
        if remote_ip == local_ip {
            continue;
        }
        let remote = desired.remote_peer(&mapped(IpAddr::V4(remote_ip)));
        for port in ports {
            let reason = match end {
                LocalEnd::Source => desired.decide_at(local, remote, IPPROTO_TCP, *port, end, tier_sets.egress),
                LocalEnd::Destination => desired.decide_at(remote, local, IPPROTO_TCP, *port, end, tier_sets.ingress),
            };
            let flow = Flow { local: local_ip, remote: remote_ip, port: *port, reason };
            if reason == Reason::PolicyAllowed {
                return Ok(flow);
            }
            if reason.is_allow() && fallback.is_none() {
                fallback = Some(flow);
            }
        }
    }
    fallback.ok_or_else(|| BenchError::Setup(format!("no allowed {end:?} flow for the local pod")))
}

/// `count` ClusterNetworkPolicies, alternately Admin and Baseline, each selecting every pod:
/// a `Pass` from every namespace on one port of its own (so the entries grow with the count)
/// and, in the last, on every port. Every verdict stays NetworkPolicy's (Admin passes to
/// it, Baseline passes to the default), while every new flow does the tier lookups.
fn add_cluster_policies(cluster: &mut moat_agent::model::Cluster, count: usize) -> Result<(), BenchError> {
    for index in 0..count {
        let tier = if index % 2 == 0 { "Admin" } else { "Baseline" };
        let ports = if index + 1 == count { json!(null) } else { json!([{"tcp": {"destinationPort": {"number": 20_000 + index}}}]) };
        let rule = |list: &str| {
            let mut rule = json!({"action": "Pass"});
            rule[list] = json!([{"namespaces": {}}]);
            if !ports.is_null() {
                rule["protocols"] = ports.clone();
            }
            rule
        };
        let spec = json!({"tier": tier, "priority": index % 1_000, "subject": {"namespaces": {}}, "ingress": [rule("from")], "egress": [rule("to")]});
        let name = format!("bench-{index}");
        let policy = ClusterNetworkPolicy::parse(&name, Some(&spec)).map_err(|(field, message)| BenchError::Setup(format!("ClusterNetworkPolicy {name}: {field}: {message}")))?;
        cluster.cluster_network_policies.insert(name, std::sync::Arc::new(policy));
    }
    Ok(())
}

/// tc verdicts as BPF_PROG_TEST_RUN reports them (`TC_ACT_UNSPEC` is -1).
const TC_NEXT: u32 = u32::MAX;
const TC_DROP: u32 = 2;

fn expect_pass(program: &'static str, case: &'static str, outcome: testrun::Outcome) -> Result<(), BenchError> {
    expect(program, case, outcome, 1)
}

fn expect(program: &'static str, case: &'static str, outcome: testrun::Outcome, expected: u32) -> Result<(), BenchError> {
    if outcome.retval == expected {
        return Ok(());
    }
    Err(BenchError::Verdict {
        program,
        case,
        retval: outcome.retval,
        expected,
        hint: "the programs did not see the local pod's cgroup, or the state differs from the userspace verdict",
    })
}

/// The cgroup id in the flow-table slot of the egress flow: the local end as the programs saw it.
fn cgroup_seen(ebpf: &mut Ebpf, remote: &[u8; 16]) -> Result<Option<u64>, BenchError> {
    let name = moat_common::maps::names::FLOWS;
    let map = ebpf.map_mut(name).ok_or_else(|| BenchError::Setup(format!("map {name} missing")))?;
    let flows: Array<&mut MapData, FlowSlot> =
        Array::try_from(map).map_err(|e| BenchError::Setup(format!("map {name}: {e}")))?;
    let seen = flows.iter().flatten().find(|slot| slot.is_live() && &slot.key.remote_addr == remote).map(|slot| slot.key.cgroup);
    Ok(seen)
}
