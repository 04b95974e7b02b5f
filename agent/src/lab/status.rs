//! `moat lab status`: state.json plus liveness of each process.

use serde_json::json;

use super::role::Role;
use super::state::LabState;
use super::{agent, pod, process, LabError, NameArg, Output};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

pub fn run(args: StatusArgs) -> Result<(), LabError> {
    let state = LabState::load(&args.name.name)?;
    let server_alive =
        |pid: Option<u32>| pid.is_some_and(|pid| process::is_alive(pid, pod::SERVE_MARKER));
    let agent_alive = state
        .agent
        .as_ref()
        .is_some_and(|a| process::is_alive(a.pid, &agent::marker(&state.name)));
    match args.output {
        Output::Json => {
            let mut value = serde_json::to_value(&state)
                .map_err(|e| LabError::Internal(format!("state: {e}")))?;
            for (key, pod) in &state.pods {
                value["pods"][key]["serverAlive"] = json!(server_alive(pod.server_pid));
            }
            if state.agent.is_some() {
                value["agent"]["alive"] = json!(agent_alive);
            }
            println!("{value}");
        }
        Output::Text => {
            println!(
                "lab {}: bridge netns {}, cgroup {}",
                state.name,
                state.bridge_netns,
                state.cgroup_root.display()
            );
            for pod in state.pods.values() {
                let ports: Vec<String> = pod
                    .ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect();
                let server = match pod.server_pid {
                    Some(pid) if server_alive(Some(pid)) => format!("server {pid} alive"),
                    Some(pid) => format!("server {pid} DEAD"),
                    None => "no server".into(),
                };
                let key = match pod.role {
                    Role::Pod => pod.key(),
                    role => format!("{} ({})", pod.key(), role.as_str()),
                };
                println!(
                    "  {:<30} {:<15} {:<24} {:<16} {}",
                    key,
                    pod.ipv4,
                    pod.ipv6,
                    ports.join(","),
                    server
                );
            }
            match &state.agent {
                Some(a) => println!(
                    "agent pid {} {}, log {}",
                    a.pid,
                    if agent_alive { "alive" } else { "DEAD" },
                    a.log.display()
                ),
                None => println!("no agent"),
            }
        }
    }
    Ok(())
}
