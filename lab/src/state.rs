//! `/run/moat/lab/<name>/state.json`: what a lab made. `down` does not need it (it derives
//! names from the lab name), everything else does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::node::NodeLayout;
use super::podspec::Mount;
use super::role::Role;
use super::volumes::VolumeState;
use super::fsutil::write_atomic;
use super::{lab_dir, LabError};
use moat_agent::model::Protocol;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub name: String,
    pub bridge_netns: String,
    /// The pods' root: `<cgroup2>/moat-lab-<name>/pods`.
    pub cgroup_root: PathBuf,
    /// Next free bridge port number (veth names in the bridge netns are `vp<n>`).
    pub next_port: u32,
    /// Keyed by `namespace/pod`.
    pub pods: BTreeMap<String, PodState>,
    pub agent: Option<AgentState>,
    /// The node's paths (see `node::NodeLayout`; derived from the name, kept for `status`).
    #[serde(default)]
    pub node: Option<NodeLayout>,
    /// The stand-in kubelet.
    #[serde(default)]
    pub kubelet: Option<KubeletState>,
    /// The API server the stand-in kubelet talks to (`lab up --api-server`).
    #[serde(default)]
    pub api_server: Option<String>,
    /// The agent runs in a mount namespace of its own with the host's `/` at
    /// `<lab dir>/host` (`lab up --agent-container`).
    #[serde(default)]
    pub agent_container: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    /// `pod`, `external` or `hidden` (annotation `lab.moat.dev/role`).
    #[serde(default)]
    pub role: Role,
    pub netns: String,
    pub cgroup: PathBuf,
    /// Name of the pod's port on br0, in the bridge netns.
    pub bridge_port: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ports: Vec<PortState>,
    pub server_pid: Option<u32>,
    pub log: PathBuf,
    /// `metadata.uid`, or derived from namespace and name (`podspec::derived_uid`).
    #[serde(default)]
    pub uid: String,
    /// `spec.hostPID`: no PID namespace of its own.
    #[serde(default)]
    pub host_pid: bool,
    /// The sandbox holding the pod's namespaces (PID 1 of its PID namespace).
    #[serde(default)]
    pub sandbox_pid: Option<u32>,
    /// The sandbox's spec file; its command line carries the path.
    #[serde(default)]
    pub sandbox_spec: PathBuf,
    #[serde(default)]
    pub volumes: Vec<VolumeState>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortState {
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl PortState {
    pub fn new(port: u16, protocol: Protocol) -> Self {
        Self {
            port,
            protocol: protocol.as_str().into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub pid: u32,
    pub argv: Vec<String>,
    pub log: PathBuf,
    pub ready_file: PathBuf,
    pub config: PathBuf,
    /// The agent's admin socket (`moat observe --lab`, `moat status --lab`).
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Where it serves `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub metrics_address: Option<String>,
}

/// What `lab status` shows of the stand-in kubelet (`kubelet::start` makes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletState {
    pub pid: u32,
    /// Absolute cgroup directory.
    pub cgroup: PathBuf,
}

impl PodState {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub fn path(name: &str) -> PathBuf {
    lab_dir(name).join("state.json")
}

impl LabState {
    /// Reads the state of lab `name`; `NotFound` when the lab was never made.
    pub fn load(name: &str) -> Result<Self, LabError> {
        let path = path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: name.into(),
                    path,
                });
            }
            Err(error) => return Err(LabError::io("reading", path, error)),
        };
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, LabError> {
        serde_json::from_str(text).map_err(|error| LabError::State {
            path: path.into(),
            message: error.to_string(),
        })
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|error| LabError::Internal(format!("serializing state: {error}")))?;
        write_atomic(&path(&self.name), text.as_bytes())
    }

    pub fn pod(&self, key: &str) -> Result<&PodState, LabError> {
        self.pods
            .get(key)
            .ok_or_else(|| LabError::UnknownPod(key.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut state = LabState {
            name: "t".into(),
            bridge_netns: "moat-t-br".into(),
            cgroup_root: "/sys/fs/cgroup/moat-lab-t".into(),
            next_port: 1,
            ..Default::default()
        };
        state.pods.insert(
            "ns/a".into(),
            PodState {
                namespace: "ns".into(),
                name: "a".into(),
                role: Role::Hidden,
                netns: "moat-t-ns.a".into(),
                cgroup: "/sys/fs/cgroup/moat-lab-t/ns_a".into(),
                bridge_port: "vp0".into(),
                ipv4: Ipv4Addr::new(10, 250, 0, 1),
                ipv6: "fd6d:6f61:7400::1".parse().unwrap(),
                ports: vec![PortState::new(80, Protocol::Tcp)],
                server_pid: Some(42),
                log: "/run/moat/lab/t/pods/ns_a.log".into(),
                uid: "u".into(),
                host_pid: true,
                sandbox_pid: Some(41),
                sandbox_spec: "/run/moat/lab/t/sandbox/ns_a/spec.json".into(),
                volumes: Vec::new(),
                mounts: Vec::new(),
            },
        );
        state.agent = Some(AgentState {
            pid: 7,
            argv: vec!["moat".into(), "agent".into()],
            log: "a.log".into(),
            ready_file: "r".into(),
            config: "c".into(),
            admin_socket: Some("/run/moat/lab/t/admin.sock".into()),
            metrics_address: Some("127.0.0.1:9".into()),
        });
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains("\"serverPid\":42"), "{text}");
        assert!(text.contains("\"sandboxPid\":41") && text.contains("\"hostPid\":true"), "{text}");
        assert!(text.contains("\"role\":\"hidden\""), "{text}");
        assert_eq!(LabState::parse(&text, Path::new("s")).unwrap(), state);
        assert!(LabState::parse("{", Path::new("s")).is_err());
    }
}
