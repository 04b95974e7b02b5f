//! `moat-lab __bench-compile`: compiles a synthetic cluster the way the agent does (node scope,
//! with this node's share of pods) and the way `moat explain` does (cluster scope), and
//! reports times, entry counts and peak memory as one JSON object.

use std::time::Instant;

use serde_json::json;

use super::synth::{self, Shape};
use super::{peak_rss_kib, BenchError};
use moat_agent::compiler::{compile_scoped, Scope};
use moat_agent::config::Config;
use moat_agent::node::cgroups::{PodCgroups, PodRef};

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 100)]
    pub pods_per_namespace: usize,
    #[arg(long, default_value_t = 5_000)]
    pub policies: usize,
    /// Pods on this node (node scope: only their policy sets are written to the kernel).
    #[arg(long, default_value_t = 110)]
    pub local_pods: usize,
}

pub fn run(args: CompileArgs) -> Result<(), BenchError> {
    let shape = Shape { pods: args.pods, pods_per_namespace: args.pods_per_namespace, policies: args.policies };
    let started = Instant::now();
    let cluster = synth::cluster(shape)?;
    let build_seconds = started.elapsed().as_secs_f64();
    let rss_before = peak_rss_kib();
    // This node's pods: spread over the cluster, as a scheduler would place them.
    let stride = (cluster.pods.len() / args.local_pods.max(1)).max(1);
    let cgroups: PodCgroups = cluster
        .pods
        .keys()
        .step_by(stride)
        .take(args.local_pods)
        .enumerate()
        .map(|(index, key)| (1000 + index as u64, PodRef::Key(key.clone())))
        .collect();
    let config = Config::default();

    let started = Instant::now();
    let node = compile_scoped(&cluster, &config, &cgroups, Scope::Node)?;
    let node_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let whole = compile_scoped(&cluster, &config, &cgroups, Scope::Cluster)?;
    let cluster_seconds = started.elapsed().as_secs_f64();

    let out = json!({
        "pods": cluster.pods.len(),
        "namespaces": cluster.namespaces.len(),
        "policies": cluster.network_policies.len(),
        "local_pods": node.local.len(),
        "build_seconds": build_seconds,
        "node_seconds": node_seconds,
        "node_rule_entries": node.policy_rules.len(),
        "cluster_seconds": cluster_seconds,
        "cluster_rule_entries": whole.policy_rules.len(),
        "policy_sets": whole.index.policy_sets.len(),
        "remote_endpoints": whole.remote.len(),
        "networks": whole.networks.len(),
        "peak_rss_kib_before_compile": rss_before,
        "peak_rss_kib": peak_rss_kib(),
    });
    println!("{out}");
    Ok(())
}
