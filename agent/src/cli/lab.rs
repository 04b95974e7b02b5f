//! `moat lab`: the lab (sandboxes, a stand-in kubelet, pod servers, benchmarks) is a binary
//! of its own, `moat-lab` (crate `lab/`), so the agent's privileged binary holds none of it.
//! `moat lab ARGS` finds `moat-lab` the way git and kubectl find their plugins, next to this
//! executable first, then on PATH, and execs it with ARGS; [`AGENT_BIN_ENV`] tells it which
//! `moat` to run as the lab's agent.
//!
//! The lab's run-dir convention is `lab_dirs` (re-exported here).

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

pub use super::lab_dirs::{admin_socket, lab_dir, parse_name, AGENT_BIN_ENV, LAB_BINARY, LAB_RUN_DIR};
use super::CliError;

/// `moat lab`'s arguments, handed to `moat-lab` untouched (`--help` included).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct LabArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Replaces this process with `moat-lab ARGS`; returns only on failure.
pub fn run(args: LabArgs) -> Result<(), CliError> {
    let own = std::env::current_exe().ok();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(lab) = find_binary(LAB_BINARY, own.as_deref(), &path) else {
        return Err(CliError::NoLabBinary { beside: own.and_then(|exe| exe.parent().map(Path::to_path_buf)) });
    };
    let mut command = std::process::Command::new(&lab);
    command.args(&args.args);
    if let Some(own) = own {
        command.env(AGENT_BIN_ENV, own);
    }
    let source = command.exec();
    Err(CliError::Exec { path: lab, source })
}

/// The executable `name` beside `own` (the running executable), else the first on `path`
/// (`$PATH`). `moat-lab` finds `moat` the same way when run on its own.
pub fn find_binary(name: &str, own: Option<&Path>, path: &OsStr) -> Option<PathBuf> {
    let beside = own.and_then(Path::parent).map(Path::to_path_buf);
    beside
        .into_iter()
        .chain(std::env::split_paths(path).filter(|dir| !dir.as_os_str().is_empty()))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_binary_is_found_beside_first_then_on_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (own_dir, path_dir) = (dir.path().join("own"), dir.path().join("path"));
        for d in [&own_dir, &path_dir] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let own = own_dir.join("moat");
        let path = std::env::join_paths([&dir.path().join("empty"), &path_dir]).expect("PATH");
        assert_eq!(find_binary(LAB_BINARY, Some(&own), &path), None);
        std::fs::write(path_dir.join(LAB_BINARY), "").expect("write");
        assert_eq!(find_binary(LAB_BINARY, Some(&own), &path), Some(path_dir.join(LAB_BINARY)));
        std::fs::write(own_dir.join(LAB_BINARY), "").expect("write");
        assert_eq!(find_binary(LAB_BINARY, Some(&own), &path), Some(own_dir.join(LAB_BINARY)));
    }
}
