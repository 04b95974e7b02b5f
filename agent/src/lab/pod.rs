//! One lab pod: its netns plugged into the bridge, its cgroup, its echo server.

use std::fs::OpenOptions;
use std::process::Stdio;
use std::time::Duration;

use super::desired::DesiredPod;
use super::net::{self, netns_path};
use super::podexec::PodPlace;
use super::state::{LabState, PodState};
use super::{cgroup, lab_dir, process, LabError};

/// Marker in a pod server's command line.
pub const SERVE_MARKER: &str = "__pod-serve";

/// Creates the pod (netns, veth, addresses, cgroup) and records it in `state` before
/// starting its server, so a failure midway leaves a record for cleanup.
pub fn create(state: &mut LabState, desired: &DesiredPod) -> Result<(), LabError> {
    let key = &desired.key;
    let netns = net::pod_netns(&state.name, &key.namespace, &key.name);
    let bridge_port = format!("vp{}", state.next_port);
    state.next_port += 1;
    let pod = PodState {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        netns: netns.clone(),
        role: desired.role,
        cgroup: cgroup_dir(state, desired),
        bridge_port: bridge_port.clone(),
        ipv4: desired.addresses.v4,
        ipv6: desired.addresses.v6,
        ports: desired.ports.clone(),
        server_pid: None,
        log: lab_dir(&state.name)
            .join("pods")
            .join(format!("{}_{}.log", key.namespace, key.name)),
    };
    state.pods.insert(key.to_string(), pod.clone());
    state.save()?;
    net::add_netns(&netns)?;
    net::plug_pod(
        &state.bridge_netns,
        &bridge_port,
        &netns,
        pod.ipv4,
        pod.ipv6,
    )?;
    if let Some(parent) = pod.cgroup.parent() {
        cgroup::create(parent)?;
    }
    cgroup::create(&pod.cgroup)?;
    let pid = start_server(&pod)?;
    if let Some(pod) = state.pods.get_mut(&key.to_string()) {
        pod.server_pid = Some(pid);
    }
    state.save()
}

/// Where the pod's cgroup goes: below the pods' root, or (external hosts) next to it.
pub fn cgroup_dir(state: &LabState, desired: &DesiredPod) -> std::path::PathBuf {
    let root = if desired.role.in_pods_root() {
        state.cgroup_root.clone()
    } else {
        cgroup::external_root(&state.cgroup_root)
    };
    cgroup::pod_dir(&root, &desired.key.namespace, &desired.key.name)
}

/// Starts `moat __pod-serve` for the pod's ports, detached, inside the pod.
pub fn start_server(pod: &PodState) -> Result<u32, LabError> {
    let mut argv = vec![SERVE_MARKER.to_string()];
    for port in &pod.ports {
        let flag = match port.protocol.as_str() {
            "UDP" => "--udp",
            "SCTP" => "--sctp",
            _ => "--tcp",
        };
        argv.push(flag.into());
        argv.push(port.port.to_string());
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pod.log)
        .map_err(|e| LabError::io("opening log", &pod.log, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LabError::io("opening log", &pod.log, e))?;
    let place = PodPlace::new(netns_path(&pod.netns), &pod.cgroup);
    let child = place
        .moat(true)?
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: format!("moat {}", argv.join(" ")),
            source,
        })?;
    let pid = child.id();
    // Give it a moment to bind; a server that dies at once (port clash) is an error.
    std::thread::sleep(Duration::from_millis(50));
    wait_ready(pod, pid)?;
    Ok(pid)
}

fn wait_ready(pod: &PodState, pid: u32) -> Result<(), LabError> {
    let ready = format!("__pod-serve[{pid}]: ready");
    for _ in 0..100 {
        if std::fs::read_to_string(&pod.log)
            .unwrap_or_default()
            .contains(&ready)
        {
            return Ok(());
        }
        if !process::is_alive(pid, SERVE_MARKER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(&pod.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    Err(LabError::InPod {
        pod: pod.key(),
        message: format!(
            "server did not become ready; log {}:\n{}",
            pod.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    })
}

pub fn stop_server(pod: &PodState) {
    if let Some(pid) = pod.server_pid {
        process::kill(pid, SERVE_MARKER);
    }
}

/// Kills everything in the pod's cgroup and removes the cgroup and the netns (which takes
/// the veth pair with it).
pub fn remove(pod: &PodState) -> Result<(), LabError> {
    stop_server(pod);
    cgroup::destroy(&pod.cgroup)?;
    net::delete_netns(&pod.netns)?;
    let _ = std::fs::remove_file(&pod.log);
    Ok(())
}
