#[derive(clap::Args)]
pub struct ConnectArgs {}

pub fn run(_args: ConnectArgs) -> Result<i32, super::LabError> {
    Err(super::LabError::NotBuilt)
}
