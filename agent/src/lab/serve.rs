#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> Result<(), super::LabError> {
    Err(super::LabError::NotBuilt)
}
