//! `guard:` in the agent configuration: a mode per detection, and where the node keeps what
//! the guard protects (the kubelet's credentials and volumes, the container runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::detections::{self, Spec};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Mode per detection id (`escape.kernel-sysctl: detect`). Unlisted detections use
    /// [`default_mode`]. Unknown ids are errors.
    pub detections: BTreeMap<String, GuardMode>,
    /// Pods in these namespaces are never reported as actors (a monitoring namespace that
    /// scrapes kubelets, a CNI that loads eBPF). The agent's own pod is always exempt.
    pub exempt_namespaces: Vec<String>,
    pub kubelet: KubeletConfig,
    pub runtime: RuntimeConfig,
    /// API server endpoints (`host:port`) a host process must not reach after reading the
    /// kubelet's credentials. Empty: the agent's own API server (kube source) if any.
    pub api_servers: Vec<String>,
    /// Node label naming the only tenant allowed on a single-tenant node.
    pub node_tenant_label: String,
    /// Where the agent sees the node's `/`: every path under `kubelet` and `runtime` is a
    /// path on the node, read below this directory (symlinks resolved inside it). `/` for an
    /// agent run on the host; the DaemonSet mounts the node's `/` at `/host`.
    pub host_root: PathBuf,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            detections: BTreeMap::new(),
            exempt_namespaces: Vec::new(),
            kubelet: KubeletConfig::default(),
            runtime: RuntimeConfig::default(),
            api_servers: Vec::new(),
            node_tenant_label: "node-restriction.kubernetes.io/tenant".into(),
            host_root: "/".into(),
        }
    }
}

/// The kubelet: what identifies it, and what it owns.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubeletConfig {
    /// The kubelet's executable; the kubelet is known by this file's inode (and `cgroup`),
    /// never by its name.
    pub executable: PathBuf,
    /// The kubelet's cgroup, relative to the cgroup v2 mount (`/system.slice/kubelet.service`).
    /// Empty: any cgroup (the executable alone identifies it).
    pub cgroup: Option<PathBuf>,
    /// The kubelet's root; pods' volumes are found below `<root>/pods/<uid>/volumes`.
    pub root: PathBuf,
    /// Client/serving certificates and keys; every file in it is protected, following
    /// rotation (`kubelet-client-current.pem` is a symlink to dated files).
    pub pki_dir: PathBuf,
    /// Kubeconfigs holding (or pointing at) the kubelet's credentials.
    pub kubeconfigs: Vec<PathBuf>,
    /// Kubelet API ports pods must not reach, on any node.
    pub ports: Vec<u16>,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            executable: "/usr/bin/kubelet".into(),
            cgroup: None,
            root: "/var/lib/kubelet".into(),
            pki_dir: "/var/lib/kubelet/pki".into(),
            kubeconfigs: vec![
                "/etc/kubernetes/kubelet.conf".into(),
                "/etc/kubernetes/bootstrap-kubelet.conf".into(),
                "/var/lib/kubelet/kubeconfig".into(),
            ],
            ports: vec![10250, 10255],
        }
    }
}

/// The container runtime: binaries a pod must not overwrite, sockets it must not reach.
/// Paths that do not exist on a node are skipped (and listed by `moat status`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub binaries: Vec<PathBuf>,
    pub sockets: Vec<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let paths = |list: &[&str]| list.iter().map(PathBuf::from).collect();
        Self {
            binaries: paths(&[
                "/usr/bin/runc",
                "/usr/sbin/runc",
                "/usr/local/bin/runc",
                "/usr/local/sbin/runc",
                "/usr/bin/crun",
                "/usr/local/bin/crun",
                "/usr/bin/containerd-shim-runc-v2",
                "/usr/local/bin/containerd-shim-runc-v2",
                "/usr/bin/conmon",
            ]),
            sockets: paths(&[
                "/run/containerd/containerd.sock",
                "/run/k3s/containerd/containerd.sock",
                "/var/run/docker.sock",
                "/run/docker.sock",
                "/run/crio/crio.sock",
                "/var/run/crio/crio.sock",
                "/run/cri-dockerd.sock",
            ]),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    Off,
    Detect,
    Block,
}

impl GuardMode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Detect => "detect",
            Self::Block => "block",
        }
    }
}

/// Every detection defaults to `block`: none of these actions has a legitimate use from a
/// tenant's pod, and where the kernel cannot block (no BPF LSM) it is still detected.
/// Trusted workloads that need one (a CNI loading eBPF, Prometheus scraping kubelets) belong
/// in `exemptNamespaces` rather than weakening the rule for every tenant.
pub const fn default_mode(_spec: &Spec) -> GuardMode {
    GuardMode::Block
}

impl GuardConfig {
    pub fn mode(&self, spec: &Spec) -> GuardMode {
        self.detections.get(spec.id).copied().unwrap_or(default_mode(spec))
    }

    /// `(field, message)` for the first invalid setting.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for id in self.detections.keys() {
            if detections::by_id(id).is_none() {
                let known: Vec<_> = detections::DETECTIONS.iter().map(|s| s.id).collect();
                return Err((format!("guard.detections.{id}"), format!("unknown detection; known: {}", known.join(", "))));
            }
        }
        if self.kubelet.ports.contains(&0) {
            return Err(("guard.kubelet.ports".into(), "port 0 is not a port".into()));
        }
        if self.node_tenant_label.is_empty() {
            return Err(("guard.nodeTenantLabel".into(), "must not be empty".into()));
        }
        for (i, server) in self.api_servers.iter().enumerate() {
            let valid = server.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
            if !valid {
                return Err((format!("guard.apiServers[{i}]"), format!("{server:?} is not host:port")));
            }
        }
        for (field, paths) in [("guard.runtime.binaries", &self.runtime.binaries), ("guard.runtime.sockets", &self.runtime.sockets), ("guard.kubelet.kubeconfigs", &self.kubelet.kubeconfigs)] {
            if let Some((i, path)) = paths.iter().enumerate().find(|(_, p)| !p.is_absolute()) {
                return Err((format!("{field}[{i}]"), format!("{} is not an absolute path", path.display())));
            }
        }
        for (field, path) in [("guard.hostRoot", &self.host_root), ("guard.kubelet.executable", &self.kubelet.executable), ("guard.kubelet.root", &self.kubelet.root), ("guard.kubelet.pkiDir", &self.kubelet.pki_dir)] {
            if !path.is_absolute() {
                return Err((field.into(), format!("{} is not an absolute path", path.display())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_spelling() {
        let config: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctl: detect").unwrap();
        assert_eq!(config.mode(&crate::detections::KERNEL_SYSCTL), GuardMode::Detect);
        assert_eq!(config.mode(&crate::detections::SETNS), GuardMode::Block);
        assert!(serde_yaml::from_str::<GuardConfig>("detections:\n  escape.kernel-sysctl: maybe").is_err());
        assert!(serde_yaml::from_str::<GuardConfig>("kernelSysctl: block").is_err());
        let unknown: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctls: block").unwrap();
        let (field, message) = unknown.validate().unwrap_err();
        assert_eq!(field, "guard.detections.escape.kernel-sysctls");
        assert!(message.contains("escape.kernel-sysctl,"), "{message}");
        let relative: GuardConfig = serde_yaml::from_str("runtime:\n  sockets: [run/x.sock]").unwrap();
        assert_eq!(relative.validate().unwrap_err().0, "guard.runtime.sockets[0]");
        let host_root: GuardConfig = serde_yaml::from_str("hostRoot: host").unwrap();
        let (field, message) = host_root.validate().unwrap_err();
        assert_eq!((field.as_str(), message.as_str()), ("guard.hostRoot", "host is not an absolute path"));
        let server: GuardConfig = serde_yaml::from_str("apiServers: [\"10.0.0.1\"]").unwrap();
        assert_eq!(server.validate().unwrap_err().0, "guard.apiServers[0]");
    }
}
