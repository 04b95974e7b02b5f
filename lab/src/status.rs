//! `moat lab status`: state.json plus liveness of each process.

use serde_json::json;

use super::role::Role;
use super::state::LabState;
use super::{agent, kubelet, pod, process, sandbox_spec, LabError, NameArg, Output};

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
    let sandbox_alive = |pod: &super::state::PodState| {
        pod.sandbox_pid.is_some_and(|pid| process::is_alive(pid, &sandbox_spec::marker(&pod.sandbox_spec)))
    };
    let kubelet_alive = state.kubelet.as_ref().is_some_and(|k| process::is_alive(k.pid, &kubelet::marker(&state.name)));
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
                value["pods"][key]["sandboxAlive"] = json!(sandbox_alive(pod));
            }
            if state.kubelet.is_some() {
                value["kubelet"]["alive"] = json!(kubelet_alive);
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
                let sandbox = match pod.sandbox_pid {
                    Some(pid) if sandbox_alive(pod) => format!("sandbox {pid}{}", if pod.host_pid { " hostPID" } else { "" }),
                    Some(pid) => format!("sandbox {pid} DEAD"),
                    None => "no sandbox".into(),
                };
                println!(
                    "  {:<30} {:<15} {:<24} {:<16} {}, {}, uid {}",
                    key,
                    pod.ipv4,
                    pod.ipv6,
                    ports.join(","),
                    server,
                    sandbox,
                    pod.uid
                );
            }
            if let Some(node) = &state.node {
                println!("node {}", node.root.display());
                println!("  kubelet root {}, pki {}", node.kubelet_root.display(), node.pki_dir.display());
                let kubeconfigs: Vec<String> = node.kubeconfigs.iter().map(|p| p.display().to_string()).collect();
                println!("  kubeconfigs {}", kubeconfigs.join(", "));
                let runtime: Vec<String> = node.runtime_binaries.iter().chain(&node.runtime_sockets).map(|p| p.display().to_string()).collect();
                println!("  runtime {}", runtime.join(", "));
            }
            match &state.kubelet {
                Some(k) => println!(
                    "kubelet pid {} {}, cgroup {}, executable {}{}",
                    k.pid,
                    if kubelet_alive { "alive" } else { "DEAD" },
                    k.cgroup.display(),
                    state.node.as_ref().map(|n| n.kubelet_executable.display().to_string()).unwrap_or_default(),
                    state.api_server.as_deref().map(|s| format!(", API server {s}")).unwrap_or_default()
                ),
                None => println!("no kubelet"),
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
