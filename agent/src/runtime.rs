//! `moat agent`: wires sources → model → compiler → kernel → events. (Being built.)
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Files or directories of Kubernetes manifests (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Agent configuration file (YAML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("not built yet")]
    NotBuilt,
}

pub fn run(_args: AgentArgs) -> Result<(), RuntimeError> {
    Err(RuntimeError::NotBuilt)
}
