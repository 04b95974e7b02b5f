//! `moat lab`'s subcommands and where each is run: the top of the lab, above every part.

use super::{agent, apply, down, exec, kubelet, podbench, probe, status, up, LabError, NameArg};

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Create a lab from manifests: the node (stand-in kubelet, volumes), pods with their
    /// sandboxes and servers, and (unless --no-agent) an agent.
    Up(up::UpArgs),
    /// Replace the lab's manifests: add new pods, remove gone ones, relabel.
    Apply(apply::ApplyArgs),
    /// Try connections from pod to pod (inside the source pod's netns and cgroup).
    Probe(probe::ProbeArgs),
    /// Remove everything a lab made, even after a crash. Idempotent.
    Down(NameArg),
    /// Show the lab's state and whether its processes are alive.
    Status(status::StatusArgs),
    /// Start, stop or kill the lab's agent.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Run a command inside a pod (its cgroup and namespaces); exits with the command's status.
    Exec(exec::ExecArgs),
    /// Ask the lab's stand-in kubelet to rotate its certificate or read its credentials.
    #[command(subcommand)]
    Kubelet(kubelet::KubeletCommand),
    /// The stand-in kubelet itself (started by `lab up` from `<node>/usr/bin/kubelet`).
    #[command(name = "kubelet-run", hide = true)]
    KubeletRun(kubelet::RunArgs),
    /// Measure request/response rate or stream throughput between two pods.
    Bench(podbench::BenchArgs),
}

pub fn run(command: LabCommand) -> Result<(), LabError> {
    match command {
        LabCommand::Up(args) => up::run(args),
        LabCommand::Apply(args) => apply::run(args),
        LabCommand::Probe(args) => probe::run(args),
        LabCommand::Down(args) => down::run(&args.name),
        LabCommand::Status(args) => status::run(args),
        LabCommand::Agent(command) => agent::run(command),
        LabCommand::Bench(args) => podbench::run(args),
        LabCommand::Exec(args) => exec::run(args),
        LabCommand::Kubelet(command) => kubelet::run_command(command),
        LabCommand::KubeletRun(args) => kubelet::run(args),
    }
}
