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
pub mod command;
pub mod connect;
pub mod desired;
pub mod down;
pub mod exec;
pub mod fsutil;
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
pub mod sandbox_spec;
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
