//! `moat-lab` (run as `moat lab`): a node with pods, on the real kernel; and the hidden
//! helpers its pods and `cargo xtask bench` run (`__pod-*`, `__bench-*`). A crate and binary
//! of its own, so the agent's privileged binary holds none of it; it links the agent's
//! library for the model, the manifests reader, the compiler and the kernel loader.
//!
//! Layout of a lab named N: bridge netns `moat-N-br` (bridge `br0`); per pod a netns
//! `moat-N-<ns>.<pod>`, a cgroup `<cgroup2>/moat-lab-N/pods/<ns>_<pod>` (external hosts:
//! `.../moat-lab-N/external/<ns>_<pod>`, see `role`) and a sandbox process holding the pod's
//! mount, UTS, IPC and PID namespaces (`sandbox`, `podroot`); a node tree under
//! `/run/moat/lab/N/node` with the kubelet's root, PKI and pod volumes (`node`, `volumes`)
//! and a stand-in kubelet in `<cgroup2>/moat-lab-N/kubelet` (`kubelet`); files under
//! `/run/moat/lab/N` (the run-dir convention of `moat_agent::cli::lab`, which the operator CLI
//! reads too). The host's root network namespace, its mounts and its files outside
//! the lab's directory are never touched.

pub mod addresses;
pub mod agent;
pub mod apply;
pub mod bench;
pub mod burst;
pub mod cgroup;
pub mod connect;
pub mod desired;
pub mod down;
pub mod exec;
pub mod kubelet;
pub mod mounts;
pub mod net;
pub mod node;
pub mod pki;
pub mod pod;
pub mod podbench;
pub mod podexec;
pub mod podroot;
pub mod podspec;
pub mod probe;
pub mod process;
pub mod role;
pub mod sandbox;
pub mod serve;
pub mod sock;
pub mod state;
pub mod status;
pub mod sys;
pub mod up;
pub mod verdict;
pub mod volumes;

use std::path::PathBuf;

pub use moat_agent::cli::lab::{lab_dir, parse_name};
pub use moat_agent::model::flow::parse_pod;

/// Arguments every lab subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct NameArg {
    /// Name of the lab: 1-20 characters of [a-z0-9-].
    #[arg(long, default_value = "default", value_parser = parse_name)]
    pub name: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

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

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "lab {name:?} already exists (or left remains); run `moat lab down --name {name}` first"
    )]
    Exists { name: String },
    #[error("lab {name:?} does not exist (no {path}); create it with `moat lab up --name {name}`")]
    NotFound { name: String, path: PathBuf },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("reading manifests")]
    Manifest(#[from] moat_agent::sources::manifests::ManifestError),
    #[error(transparent)]
    Mount(#[from] moat_agent::node::mounts::MountError),
    #[error(transparent)]
    Config(#[from] moat_agent::config::ConfigError),
    #[error("{0}")]
    Address(#[from] addresses::AddressError),
    #[error("{file}: {object}: {message}")]
    BadObject {
        file: PathBuf,
        object: String,
        message: String,
    },
    #[error("no pod {0} in the lab")]
    UnknownPod(String),
    #[error("{0}")]
    Usage(String),
    #[error("agent: {message}\n--- tail of {log} ---\n{tail}")]
    Agent {
        message: String,
        log: PathBuf,
        tail: String,
    },
    #[error("pod {pod}: {message}")]
    InPod { pod: String, message: String },
    #[error("{0}")]
    Internal(String),
}

impl LabError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
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
