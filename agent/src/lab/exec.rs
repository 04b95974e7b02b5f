//! `moat lab exec NS/POD -- CMD [ARGS...]`: runs CMD inside the pod's network namespace and
//! cgroup with stdin, stdout and stderr inherited. `moat` enters the pod and then *becomes*
//! CMD (execve), so the exit status and signals are CMD's own.

use std::os::unix::process::CommandExt;

use super::net::netns_path;
use super::podexec::PodPlace;
use super::state::LabState;
use super::{parse_pod, LabError, NameArg};
use crate::model::PodKey;

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
    let place = PodPlace::new(netns_path(&pod.netns), &pod.cgroup);
    // Without fork the setns/cgroup step of PodPlace runs in this (single-threaded) process
    // right before execve.
    let error = place.command(program, false)?.args(rest).exec();
    Err(LabError::Spawn {
        command: args.command.join(" "),
        source: error,
    })
}
