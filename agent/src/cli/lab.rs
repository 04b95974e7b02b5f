//! `moat lab`: the lab (sandboxes, a stand-in kubelet, pod servers, benchmarks) is a binary
//! of its own, `moat-lab` (crate `lab/`), so the agent's privileged binary holds none of it.
//! `moat lab ARGS` finds `moat-lab` the way git and kubectl find their plugins, next to this
//! executable first, then on PATH, and execs it with ARGS; [`AGENT_BIN_ENV`] tells it which
//! `moat` to run as the lab's agent.
//!
//! The lab's run-dir convention lives here too: both sides read it, and the operator CLI
//! (`--lab NAME`) finds a lab agent's admin socket with it, linking no lab code.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::CliError;

/// The lab's binary.
pub const LAB_BINARY: &str = "moat-lab";
/// Set by `moat lab` for `moat-lab`: the `moat` binary the lab starts as its agent.
pub const AGENT_BIN_ENV: &str = "MOAT_AGENT_BIN";
/// Lab N keeps its files in `<LAB_RUN_DIR>/N`.
pub const LAB_RUN_DIR: &str = "/run/moat/lab";

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

/// Validates a lab name: `[a-z0-9-]{1,20}` (one path component under [`LAB_RUN_DIR`]).
pub fn parse_name(text: &str) -> Result<String, String> {
    let ok = (1..=20).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("invalid lab name {text:?}: want 1-20 characters of [a-z0-9-]"))
    }
}

/// `/run/moat/lab/<name>`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LAB_RUN_DIR).join(name)
}

/// `/run/moat/lab/<name>/admin.sock`: the lab's agent's admin socket (the lab writes it into
/// its agent's configuration).
pub fn admin_socket(name: &str) -> PathBuf {
    lab_dir(name).join("admin.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(parse_name("default").is_ok());
        assert!(parse_name("a-1").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name("Upper").is_err());
        assert!(parse_name("a/b").is_err());
        assert!(parse_name("a".repeat(21).as_str()).is_err());
        assert!(parse_name("external").is_ok());
    }

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
