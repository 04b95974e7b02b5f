//! `moat lab`: pods as network namespaces plus cgroups, on the real kernel. (Being built.)

pub mod connect;
pub mod serve;

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Not built yet.
    Up,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("not built yet")]
    NotBuilt,
}

pub fn run(_command: LabCommand) -> Result<(), LabError> {
    Err(LabError::NotBuilt)
}
