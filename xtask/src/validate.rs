//! Offline validation of every Kubernetes manifest under deploy/ against the Kubernetes
//! OpenAPI schemas: PyPI `kubernetes-validate`, which bundles the schemas (no network at
//! validation time), in a virtualenv that `cargo xtask setup` creates under the target dir.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{run, target_dir, workspace_root};

pub const VALIDATOR_VERSION: &str = "1.37.0";
/// The oldest Kubernetes the manifests must be valid for.
pub const KUBERNETES_VERSION: &str = "1.33.0";

pub fn venv_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("kubernetes-validate-venv"))
}

pub fn validator() -> Result<PathBuf> {
    Ok(venv_dir()?.join("bin/kubernetes-validate"))
}

/// Whether the pinned validator is installed.
pub fn installed() -> Result<bool> {
    let pip = venv_dir()?.join("bin/pip");
    let Ok(output) = Command::new(pip).args(["show", "kubernetes-validate"]).output() else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(output.status.success() && text.lines().any(|line| line == format!("Version: {VALIDATOR_VERSION}")))
}

/// The commands that install it (python3 -m venv, pip install).
pub fn install_commands() -> Result<Vec<Command>> {
    let venv = venv_dir()?;
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", &format!("kubernetes-validate=={VALIDATOR_VERSION}")]);
    Ok(vec![create, pip])
}

pub fn install() -> Result<()> {
    for mut command in install_commands()? {
        run(&mut command)?;
    }
    Ok(())
}

/// Every manifest under deploy/ (the kustomization file is kustomize's, not an API object).
pub fn manifests() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [workspace_root().join("deploy"), workspace_root().join("deploy/demo")] {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if yaml && name != "kustomization.yaml" {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Validates every manifest (strict: unknown fields are errors).
pub fn validate_manifests() -> Result<()> {
    let validator = validator()?;
    if !validator.is_file() {
        bail!("{} is missing; run `cargo xtask setup`", validator.display());
    }
    let files = manifests()?;
    println!("validating {} manifests against Kubernetes {KUBERNETES_VERSION} (offline)", files.len());
    run(Command::new(validator).args(["--strict", "--quiet", "-k", KUBERNETES_VERSION]).args(&files))
}
