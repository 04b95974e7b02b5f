//! What a pod's sandbox is to make (`SandboxSpec`), as the lab writes it and the sandbox
//! reads it, and how its command line is recognised.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const COMMAND: &str = "__pod-sandbox";

/// What the sandbox makes; written by the lab as JSON next to the pod's other files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// `namespace/pod`, for messages.
    pub pod: String,
    pub hostname: String,
    pub host_pid: bool,
    /// An empty directory: the pod's root is mounted on it (in the pod's mount namespace only).
    pub root: PathBuf,
    pub mounts: Vec<BindMount>,
    /// Host paths whose mounts the pod drops from its copy of the mount tree.
    pub hide: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the pod.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Appears in the sandbox's command line (and so PID 1's, a fork of it), and nowhere else.
pub fn marker(spec: &Path) -> String {
    format!("{COMMAND} --spec {}", spec.display())
}
