//! `moat lab up`: creates a lab from manifests. On any failure it tears down what it made.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::desired::{self, Desired};
use super::node::{self, NodeLayout};
use super::state::LabState;
use super::{agent, cgroup, down, kubelet, lab_dir, net, pod, LabError, NameArg};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Files or directories of Kubernetes manifests (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Do not start the lab's agent (pods only).
    #[arg(long)]
    pub no_agent: bool,
    /// Agent configuration (YAML); the lab overrides instance, cgroupRoot and cgroupLayout,
    /// and fills in the guard's node locations (`guard.kubelet`, `guard.runtime`) unset there.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The API server (URL or host:port) the stand-in kubelet talks to, named in its
    /// kubeconfigs and in the agent's `guard.apiServers`.
    #[arg(long)]
    pub api_server: Option<String>,
    /// Run the agent as the DaemonSet does: in a mount namespace of its own where the lab's
    /// node tree is hidden, with the host's / at <lab dir>/host (read-only, receiving later
    /// mounts) and guard.hostRoot pointing there, in a cgroup namespace of its own, and with
    /// only the DaemonSet's capabilities.
    #[arg(long)]
    pub agent_container: bool,
}

pub fn run(args: UpArgs) -> Result<(), LabError> {
    let name = args.name.name.clone();
    if down::exists(&name) {
        return Err(LabError::Exists { name });
    }
    // Everything that only reads comes first: bad manifests leave nothing behind.
    let desired = desired::compute(&args.files, &BTreeMap::new())?;
    if let Some(server) = args.api_server.as_deref().filter(|s| node::host_port(s).is_none()) {
        return Err(LabError::Usage(format!("--api-server {server:?}: want a URL or host:port")));
    }
    let cgroup_root = cgroup::pods_root(&cgroup::lab_root(&name)?);
    let parent = lab_dir(&name)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    // Another lab's `down` removes the shared parent once it is empty: create it again if it
    // vanished between the two calls.
    let mut attempts = 0;
    loop {
        std::fs::create_dir_all(&parent).map_err(|e| LabError::io("creating", &parent, e))?;
        match std::fs::create_dir(lab_dir(&name)) {
            Ok(()) => break,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::Exists { name });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(error) => return Err(LabError::io("creating", lab_dir(&name), error)),
        }
    }
    let mut state = LabState {
        name: name.clone(),
        bridge_netns: net::bridge_netns(&name),
        cgroup_root,
        node: Some(NodeLayout::of(&name)),
        api_server: args.api_server.clone(),
        agent_container: args.agent_container,
        ..Default::default()
    };
    match build(&mut state, &desired, &args) {
        Ok(()) => {
            print_summary(&state, &desired);
            Ok(())
        }
        Err(error) => {
            eprintln!("moat lab up {name}: failed; cleaning up");
            if let Err(cleanup) = down::teardown(&name) {
                eprintln!("moat lab up {name}: cleanup: {cleanup}");
            }
            Err(error)
        }
    }
}

fn build(state: &mut LabState, desired: &Desired, args: &UpArgs) -> Result<(), LabError> {
    let name = state.name.clone();
    for dir in [desired::manifests_dir(&name), lab_dir(&name).join("pods"), lab_dir(&name).join("sandbox")] {
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
    }
    state.save()?;
    agent::write_config(state, args.config.as_deref())?;
    node::provision(&name, &NodeLayout::of(&name), state.api_server.as_deref())?;
    if state.agent_container {
        // Before any pod volume is mounted below the node: the node's bind then holds them
        // all, and each propagates to the agent's namespace.
        agent::prepare_container(&name)?;
    }
    net::create_bridge(&state.bridge_netns)?;
    if let Some(lab_root) = state.cgroup_root.parent() {
        cgroup::create(lab_root)?;
    }
    cgroup::create(&state.cgroup_root)?;
    state.kubelet = Some(kubelet::start(&name, &state.cgroup_root)?);
    state.save()?;
    // Every pod's volumes exist before the first sandbox copies the host's mounts, so a
    // hostPath of the kubelet's root shows every pod's volumes.
    for pod in desired.pods.values() {
        pod::prepare(state, pod)?;
    }
    for key in desired.pods.keys() {
        pod::start(state, &key.to_string())?;
    }
    desired::write_cluster_json(&name, &desired.agent_items())?;
    if !args.no_agent {
        state.agent = Some(agent::start(state)?);
        state.save()?;
    }
    Ok(())
}

fn print_summary(state: &LabState, desired: &Desired) {
    println!("lab {} is up: {} pods", state.name, state.pods.len());
    for pod in state.pods.values() {
        let ports: Vec<String> = pod
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        println!(
            "  {:<30} {:<15} {:<24} {}",
            pod.key(),
            pod.ipv4,
            pod.ipv6,
            ports.join(",")
        );
    }
    for key in &desired.host_network {
        println!("  {key}: hostNetwork, not run in the lab");
    }
    if let (Some(node), Some(kubelet)) = (&state.node, &state.kubelet) {
        println!("node {}: kubelet pid {} ({})", node.root.display(), kubelet.pid, node.kubelet_executable.display());
    }
    match &state.agent {
        Some(agent) => println!("agent pid {}, log {}", agent.pid, agent.log.display()),
        None => println!(
            "no agent (--no-agent); start one with `moat lab agent start --name {}`",
            state.name
        ),
    }
}
