use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|package| package.name.as_str() == "moat-ebpf")
        .ok_or_else(|| anyhow!("moat-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("moat-ebpf manifest has no parent directory"))?;
    // The stable toolchain builds core for the BPF target when RUSTC_BOOTSTRAP=1 (set by
    // .cargo/config.toml), so no nightly toolchain is needed.
    aya_build::build_ebpf(
        [Package { name: "moat-ebpf", root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::Custom("stable"),
    )
}
