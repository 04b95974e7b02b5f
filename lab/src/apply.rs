//! `moat lab apply`: makes a running lab match new manifests. Pods keep their addresses;
//! new pods are created, gone pods removed, changed ports restart the pod's server, and
//! manifests/cluster.json is replaced atomically (the agent polls it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::addresses::PodAddresses;
use super::role::Role;
use super::state::LabState;
use super::{desired, net, pod, LabError, NameArg};
use moat_agent::model::PodKey;

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Files or directories of Kubernetes manifests (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: ApplyArgs) -> Result<(), LabError> {
    let mut state = LabState::load(&args.name.name)?;
    let previous: BTreeMap<PodKey, PodAddresses> = state
        .pods
        .values()
        .map(|p| {
            (
                PodKey::new(&p.namespace, &p.name),
                PodAddresses {
                    v4: p.ipv4,
                    v6: p.ipv6,
                },
            )
        })
        .collect();
    let desired = desired::compute(&args.files, &previous)?;
    let mut changes = Vec::new();

    for (key, wanted) in &desired.pods {
        let id = key.to_string();
        let existing = state.pods.get(&id).cloned();
        // A pod that becomes or stops being external moves to another cgroup tree, and one
        // whose uid, hostPID or mounts change needs another sandbox: it is made anew (same
        // addresses).
        let moved = existing.clone().and_then(|current| {
            let why = if current.cgroup != pod::cgroup_dir(&state, wanted) {
                format!("role {} -> {}", current.role.as_str(), wanted.role.as_str())
            } else if current.uid != wanted.node.uid {
                format!("uid {} -> {}", current.uid, wanted.node.uid)
            } else if current.host_pid != wanted.node.host_pid {
                format!("hostPID {} -> {}", current.host_pid, wanted.node.host_pid)
            } else if current.mounts != wanted.node.mounts {
                "volume mounts changed".to_string()
            } else {
                return None;
            };
            Some((current, why))
        });
        if let Some((current, why)) = &moved {
            pod::remove(&state.name, current)?;
            state.pods.remove(&id);
            state.save()?;
            changes.push(format!("~ {id} {why}; recreated"));
        }
        let Some(current) = existing.filter(|_| moved.is_none()) else {
            pod::create(&mut state, wanted)?;
            changes.push(format!(
                "+ {id} {} {}{}",
                wanted.addresses.v4,
                wanted.addresses.v6,
                match wanted.role {
                    Role::Pod => String::new(),
                    role => format!(" ({})", role.as_str()),
                }
            ));
            continue;
        };
        let mut updated = current.clone();
        // Secret, ConfigMap and token contents follow the manifests, as kubelet syncs them.
        updated.volumes = pod::provision_volumes(&state, wanted)?;
        if current.role != wanted.role {
            updated.role = wanted.role;
            changes.push(format!(
                "~ {id} role {} -> {}",
                current.role.as_str(),
                wanted.role.as_str()
            ));
        }
        if current.ipv4 != wanted.addresses.v4 || current.ipv6 != wanted.addresses.v6 {
            net::address_pod(&current.netns, wanted.addresses.v4, wanted.addresses.v6)?;
            updated.ipv4 = wanted.addresses.v4;
            updated.ipv6 = wanted.addresses.v6;
            changes.push(format!(
                "~ {id} readdressed {} {}",
                updated.ipv4, updated.ipv6
            ));
            forget(
                &state,
                &[current.ipv4.to_string(), current.ipv6.to_string()],
            );
        }
        if current.ports != wanted.ports {
            pod::stop_server(&current);
            updated.ports = wanted.ports.clone();
            updated.server_pid = None;
            state.pods.insert(id.clone(), updated.clone());
            state.save()?;
            updated.server_pid = Some(pod::start_server(&updated)?);
            changes.push(format!("~ {id} ports changed; server restarted"));
        }
        state.pods.insert(id, updated);
        state.save()?;
    }

    // The agent sees the new objects before the removed pods go away.
    desired::write_cluster_json(&state.name, &desired.agent_items())?;

    let gone: Vec<String> = state
        .pods
        .values()
        .filter(|p| {
            !desired
                .pods
                .contains_key(&PodKey::new(&p.namespace, &p.name))
        })
        .map(|p| p.key())
        .collect();
    for id in gone {
        if let Some(current) = state.pods.get(&id).cloned() {
            pod::remove(&state.name, &current)?;
            state.pods.remove(&id);
            state.save()?;
            forget(
                &state,
                &[current.ipv4.to_string(), current.ipv6.to_string()],
            );
            changes.push(format!("- {id}"));
        }
    }
    if changes.is_empty() {
        println!("lab {}: manifests replaced; no pod changes", state.name);
    } else {
        println!("lab {}: manifests replaced", state.name);
        for change in changes {
            println!("  {change}");
        }
    }
    Ok(())
}

/// Makes every pod forget the neighbour entries of addresses that moved or went away, so a
/// later reuse is not sent to a dead MAC address.
fn forget(state: &LabState, ips: &[String]) {
    for pod in state.pods.values() {
        for ip in ips {
            if let Err(error) = net::forget_neighbor(&pod.netns, ip) {
                eprintln!("moat lab apply: {error}");
            }
        }
    }
}
