//! One lab pod: its netns plugged into the bridge, its cgroup, its volumes on the node, its
//! sandbox (the pod's other namespaces) and its echo server.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::desired::DesiredPod;
use super::fsutil::tail;
use super::node::NodeLayout;
use super::podexec::{PodPlace, Start};
use super::sandbox;
use super::sandbox_spec::SandboxSpec;
use super::state::{LabState, PodState};
use super::volumes::{self, Owner};
use super::{cgroup, lab_dir, net, process, LabError};

/// Marker in a pod server's command line.
pub const SERVE_MARKER: &str = "__pod-serve";

/// Creates the pod and starts it. `up` instead prepares every pod before starting any, so
/// every pod's volumes exist when the first sandbox copies the host's mounts.
pub fn create(state: &mut LabState, desired: &DesiredPod) -> Result<(), LabError> {
    prepare(state, desired)?;
    start(state, &desired.key.to_string())
}

/// Makes the pod's netns, addresses, cgroup and volumes. It is recorded in `state` first, so
/// a failure midway leaves a record for cleanup.
pub fn prepare(state: &mut LabState, desired: &DesiredPod) -> Result<(), LabError> {
    let key = &desired.key;
    let netns = net::pod_netns(&state.name, &key.namespace, &key.name);
    let bridge_port = format!("vp{}", state.next_port);
    state.next_port += 1;
    let mut pod = PodState {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        netns: netns.clone(),
        role: desired.role,
        cgroup: cgroup_dir(state, desired),
        bridge_port: bridge_port.clone(),
        ipv4: desired.addresses.v4,
        ipv6: desired.addresses.v6,
        ports: desired.ports.clone(),
        server_pid: None,
        log: lab_dir(&state.name).join("pods").join(format!("{}_{}.log", key.namespace, key.name)),
        uid: desired.node.uid.clone(),
        host_pid: desired.node.host_pid,
        sandbox_pid: None,
        sandbox_spec: sandbox_dir(&state.name, &key.namespace, &key.name).join("spec.json"),
        volumes: Vec::new(),
        mounts: desired.node.mounts.clone(),
    };
    state.pods.insert(key.to_string(), pod.clone());
    state.save()?;
    net::add_netns(&netns)?;
    net::plug_pod(&state.bridge_netns, &bridge_port, &netns, pod.ipv4, pod.ipv6)?;
    if let Some(parent) = pod.cgroup.parent() {
        cgroup::create(parent)?;
    }
    cgroup::create(&pod.cgroup)?;
    pod.volumes = provision_volumes(state, desired)?;
    state.pods.insert(key.to_string(), pod);
    state.save()
}

/// (Re)makes the pod's volumes; run again on `apply`, it updates their contents atomically
/// as the kubelet does.
pub fn provision_volumes(state: &LabState, desired: &DesiredPod) -> Result<Vec<volumes::VolumeState>, LabError> {
    for note in &desired.node.notes {
        eprintln!("moat lab: pod {}: {note}", desired.key);
    }
    let owner = Owner { lab: &state.name, namespace: &desired.key.namespace, pod: &desired.key.name, node: &desired.node };
    volumes::provision(&NodeLayout::of(&state.name), &owner)
}

/// Starts the prepared pod `key`: its sandbox, then its server.
pub fn start(state: &mut LabState, key: &str) -> Result<(), LabError> {
    let pod = state.pod(key)?.clone();
    let spec = sandbox_spec(&state.name, &pod);
    let pid = sandbox::start(&pod, &spec)?;
    set(state, key, |pod| pod.sandbox_pid = Some(pid))?;
    let pod = state.pod(key)?.clone();
    let server = start_server(&pod)?;
    set(state, key, |pod| pod.server_pid = Some(server))
}

fn set(state: &mut LabState, key: &str, change: impl FnOnce(&mut PodState)) -> Result<(), LabError> {
    if let Some(pod) = state.pods.get_mut(key) {
        change(pod);
    }
    state.save()
}

/// `<lab dir>/sandbox/<namespace>_<pod>`: the sandbox's spec and its root's mount point.
fn sandbox_dir(lab: &str, namespace: &str, pod: &str) -> PathBuf {
    lab_dir(lab).join("sandbox").join(format!("{namespace}_{pod}"))
}

fn sandbox_spec(lab: &str, pod: &PodState) -> SandboxSpec {
    // A pod's hostname is its name (at most 63 characters, as a label).
    let hostname: String = pod.name.chars().take(63).collect();
    SandboxSpec {
        pod: pod.key(),
        hostname,
        host_pid: pod.host_pid,
        root: sandbox_dir(lab, &pod.namespace, &pod.name).join("root"),
        mounts: volumes::bind_mounts(&pod.volumes, &pod.mounts),
        // Other pods' volumes and the netns of every lab: a pod must not pin them.
        hide: vec![PathBuf::from(net::NETNS_DIR), lab_dir(lab).parent().map(PathBuf::from).unwrap_or_default()],
    }
}

/// Where the pod's cgroup goes: below the pods' root, or (external hosts) next to it.
pub fn cgroup_dir(state: &LabState, desired: &DesiredPod) -> PathBuf {
    let root = if desired.role.in_pods_root() {
        state.cgroup_root.clone()
    } else {
        cgroup::external_root(&state.cgroup_root)
    };
    cgroup::pod_dir(&root, &desired.key.namespace, &desired.key.name)
}

/// Starts `moat-lab __pod-serve` for the pod's ports, detached, inside the pod.
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
    let log_err = log.try_clone().map_err(|e| LabError::io("opening log", &pod.log, e))?;
    // The server names its pid as its PID namespace sees it: look for its line after here.
    let offset = std::fs::metadata(&pod.log).map(|m| m.len() as usize).unwrap_or(0);
    let mut command = PodPlace::of(pod)?.moat(Start::Detached)?;
    command.args(&argv).stdin(Stdio::null()).stdout(log).stderr(log_err);
    let pid = command.spawn_detached()?;
    wait_ready(pod, pid, offset)?;
    Ok(pid)
}

fn wait_ready(pod: &PodState, pid: u32, offset: usize) -> Result<(), LabError> {
    let since = || std::fs::read(&pod.log).map(|bytes| String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default()).into_owned());
    for _ in 0..250 {
        if since().unwrap_or_default().lines().any(|line| line.starts_with("__pod-serve[") && line.ends_with("]: ready")) {
            return Ok(());
        }
        if !process::is_alive(pid, SERVE_MARKER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LabError::InPod {
        pod: pod.key(),
        message: format!("server did not become ready; log {}:\n{}", pod.log.display(), tail(&pod.log, 5)),
    })
}

pub fn stop_server(pod: &PodState) {
    if let Some(pid) = pod.server_pid {
        process::kill(pid, SERVE_MARKER);
    }
}

/// Kills everything in the pod's cgroup (its sandbox with it), then removes the cgroup, the
/// volumes, the netns (which takes the veth pair with it) and the pod's files.
pub fn remove(lab: &str, pod: &PodState) -> Result<(), LabError> {
    stop_server(pod);
    cgroup::destroy(&pod.cgroup)?;
    if !pod.uid.is_empty() {
        volumes::release(&NodeLayout::of(lab), &pod.uid)?;
    }
    net::delete_netns(&pod.netns)?;
    let _ = std::fs::remove_file(&pod.log);
    let _ = std::fs::remove_dir_all(sandbox_dir(lab, &pod.namespace, &pod.name));
    Ok(())
}
