//! `moat lab exec NS/POD -- CMD [ARGS...]`: runs CMD inside the pod (its cgroup and its
//! sandbox's namespaces) with stdin, stdout and stderr inherited, as a tenant's process would.
//! `moat` enters the pod and then *becomes* CMD (execve); in a pod with a PID namespace it
//! forks first and stays as CMD's parent, exiting with CMD's status (see `podexec`).

use std::os::unix::process::CommandExt;

use super::podexec::{PodPlace, Start};
use super::state::LabState;
use super::{parse_pod, LabError, NameArg};
use moat_agent::model::PodKey;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// The pod: NAMESPACE/POD.
    #[arg(value_parser = parse_pod)]
    pub pod: PodKey,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Only returns on failure: on success the process is replaced by the command.
pub fn run(args: ExecArgs) -> Result<(), LabError> {
    let state = LabState::load(&args.name.name)?;
    let pod = state.pod(&args.pod.to_string())?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| LabError::Usage("no command given after --".into()))?;
    // The pre-exec step of PodPlace runs in this (single-threaded) process right before
    // execve, so joining the mount namespace is allowed.
    let mut command = PodPlace::of(pod)?.command(program, Start::Attached)?;
    let error = command.args(rest).exec();
    Err(LabError::Spawn {
        command: args.command.join(" "),
        source: error,
    })
}
