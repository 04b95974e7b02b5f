//! `moat explain`: the command — its arguments, loading the manifests and the config,
//! and printing what `explain` (flows between pods) or `explain_dns` (DNS questions) says.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::compiler::{self, Scope};
use crate::config::Config;
use crate::explain::{explain, explain_to_address, incomplete, parse_labels, ExplainError, Explanation, Format};
use crate::model::flow::{parse_pod, Family, Target};
use crate::model::{Labels, PodKey};
use crate::node::cgroups::PodCgroups;
use crate::sources::manifests;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Files or directories of manifests (`kubectl get namespaces,pods,networkpolicies -A -o yaml`).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Agent configuration (tenant label, exceptions, defaults) to explain under.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's labels, `KEY=VALUE[,KEY=VALUE...]`, instead of a Node in the manifests
    /// (`guard.nodeTenantLabel` reserves a node for one tenant).
    #[arg(long, value_parser = parse_labels)]
    pub node_labels: Option<Labels>,
    #[arg(long, value_parser = parse_pod, required_unless_present = "matrix", conflicts_with = "matrix")]
    pub from: Option<PodKey>,
    /// NAMESPACE/POD, or an IP address (a node, anything outside the cluster): then only
    /// the floor and `--from`'s egress rules decide, over the address's family.
    #[arg(long, value_parser = parse_destination, required_unless_present_any = ["matrix", "dns"], conflicts_with_all = ["matrix", "dns"])]
    pub to: Option<Destination>,
    /// A DNS question from `--from` instead of a flow: what tenant DNS isolation does with
    /// NAME (`web.team-b.svc.cluster.local`), any record type.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["matrix", "port"])]
    pub dns: Option<String>,
    /// Every ordered pair of distinct pods.
    #[arg(long)]
    pub matrix: bool,
    /// PORT[/TCP|UDP|SCTP] (default TCP) or `icmp`.
    #[arg(long, value_parser = Target::parse, required_unless_present = "dns")]
    pub port: Option<Target>,
    /// Which of the pods' addresses to use.
    #[arg(long, value_enum, default_value = "4")]
    pub family: Family,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Format,
}

#[derive(Serialize)]
struct MatrixOutput<'a> {
    port: u16,
    protocol: &'a str,
    /// Policy objects in the manifests that moat does not enforce (no verdict considers them).
    unenforced: &'a [String],
    results: &'a [Explanation],
}

#[derive(Serialize)]
struct SingleOutput<'a> {
    #[serde(flatten)]
    result: &'a Explanation,
    unenforced: &'a [String],
}

/// Where `--to` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Pod(PodKey),
    Address(IpAddr),
}

fn parse_destination(text: &str) -> Result<Destination, String> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(Destination::Address(ip.to_canonical())),
        Err(_) => parse_pod(text).map(Destination::Pod),
    }
}

pub fn run(args: ExplainArgs) -> Result<(), ExplainError> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let loaded = manifests::load_for_node(&args.files, config.node_name.as_deref())?;
    let unenforced = loaded.unenforced.lines();
    let mut cluster = loaded.cluster;
    if let Some(labels) = &args.node_labels {
        cluster.node_labels = labels.clone();
    }
    let desired = compiler::compile_scoped(&cluster, &config, &PodCgroups::new(), Scope::Cluster)?;
    if let (Some(name), Some(from)) = (&args.dns, &args.from) {
        return crate::explain_dns::print(&cluster, &desired, from, name, args.output);
    }
    // Without --dns, clap requires --port.
    let Some(port) = args.port else { return Ok(()) };
    let pairs: Vec<(PodKey, Destination)> = match (&args.from, &args.to) {
        (Some(from), Some(to)) => vec![(from.clone(), to.clone())],
        _ => {
            let pods: Vec<&PodKey> = cluster
                .pods
                .iter()
                .filter(|(key, pod)| {
                    let addressed = !pod.ips.is_empty() && !pod.host_network;
                    if !addressed {
                        eprintln!("skipping {key}: it has no pod address of its own");
                    }
                    addressed
                })
                .map(|(key, _)| key)
                .collect();
            pods.iter().flat_map(|a| pods.iter().filter(move |b| a != *b).map(move |b| ((*a).clone(), Destination::Pod((*b).clone())))).collect()
        }
    };
    let mut results = Vec::new();
    for (from, to) in &pairs {
        results.push(match to {
            Destination::Pod(to) => explain(&cluster, &desired, from, to, port, args.family)?,
            Destination::Address(to) => explain_to_address(&cluster, &desired, from, *to, port)?,
        });
    }
    incomplete(&mut results, &unenforced);
    match args.output {
        Format::Json if args.matrix => {
            let output = MatrixOutput { port: port.port(), protocol: port.protocol(), unenforced: &unenforced, results: &results };
            println!("{}", serde_json::to_string(&output)?);
        }
        Format::Json => println!("{}", serde_json::to_string(&SingleOutput { result: &results[0], unenforced: &unenforced })?),
        Format::Text => {
            if !unenforced.is_empty() {
                println!("WARNING: moat does not enforce these policy objects; the verdicts below are decided without them:");
                for line in &unenforced {
                    println!("  - {line}");
                }
            }
            for result in &results {
                let incomplete = if result.complete { "" } else { " (INCOMPLETE: see the warning above)" };
                println!("{} -> {} {}/{}: {}{incomplete}", result.from, result.to, port.port(), port.protocol(), result.verdict.to_uppercase());
                for reason in &result.reasons {
                    println!("  - {reason}");
                }
            }
        }
    }
    Ok(())
}
