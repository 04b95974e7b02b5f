//! The lab's node: a file tree under `<lab dir>/node` laid out like a kubeadm node (kubelet
//! root and PKI, kubeconfigs, runtime binary and socket), which the lab's agent is configured
//! to guard. Every path derives from the lab name, so `down` and the tests need no state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::current_exe;
use super::pki::{self, Credential};
use super::{cgroup, lab_dir, LabError};

/// The API server the kubeconfigs name when the lab knows none (never contacted).
pub const PLACEHOLDER_SERVER: &str = "https://127.0.0.1:6443";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLayout {
    /// `<lab dir>/node`: stands for the node's `/`.
    pub root: PathBuf,
    /// `<root>/var/lib/kubelet`.
    pub kubelet_root: PathBuf,
    /// `<kubelet root>/pki`.
    pub pki_dir: PathBuf,
    /// `kubelet.conf`, `bootstrap-kubelet.conf` (under `<root>/etc/kubernetes`) and
    /// `<kubelet root>/kubeconfig`.
    pub kubeconfigs: Vec<PathBuf>,
    /// `<root>/usr/bin/kubelet`: a copy of moat with an inode of its own.
    pub kubelet_executable: PathBuf,
    /// The stand-in kubelet's cgroup relative to the cgroup2 mount: `/moat-lab-<name>/kubelet`.
    pub kubelet_cgroup: PathBuf,
    pub runtime_binaries: Vec<PathBuf>,
    pub runtime_sockets: Vec<PathBuf>,
    /// The stand-in kubelet's control socket (`moat lab kubelet read|rotate`).
    pub control_socket: PathBuf,
    pub kubelet_log: PathBuf,
}

impl NodeLayout {
    pub fn of(lab: &str) -> Self {
        let dir = lab_dir(lab);
        let root = dir.join("node");
        let kubelet_root = root.join("var/lib/kubelet");
        let etc = root.join("etc/kubernetes");
        Self {
            pki_dir: kubelet_root.join("pki"),
            kubeconfigs: vec![etc.join("kubelet.conf"), etc.join("bootstrap-kubelet.conf"), kubelet_root.join("kubeconfig")],
            kubelet_executable: root.join("usr/bin/kubelet"),
            kubelet_cgroup: Path::new("/").join(cgroup::lab_cgroup_name(lab)).join(cgroup::KUBELET),
            runtime_binaries: vec![root.join("usr/bin/runc")],
            runtime_sockets: vec![root.join("run/containerd/containerd.sock")],
            control_socket: dir.join("kubelet.sock"),
            kubelet_log: dir.join("kubelet.log"),
            kubelet_root,
            root,
        }
    }

    /// `<pki>/kubelet-client-current.pem`: the rotation symlink.
    pub fn current_client_cert(&self) -> PathBuf {
        self.pki_dir.join(pki::CLIENT_CURRENT)
    }

    pub fn serving_cert(&self) -> (PathBuf, PathBuf) {
        (self.pki_dir.join("kubelet.crt"), self.pki_dir.join("kubelet.key"))
    }

    /// `<kubelet root>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.kubelet_root.join("pods").join(uid)
    }

    /// `<kubelet root>/pods/<uid>/volumes/<plugin>/<name>`.
    pub fn volume_dir(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(plugin).join(name)
    }

    /// Every file the kubelet reads as its credentials.
    pub fn credentials(&self) -> Vec<PathBuf> {
        let (crt, key) = self.serving_cert();
        let mut files = vec![self.current_client_cert(), crt, key];
        files.extend(self.kubeconfigs.iter().cloned());
        files
    }
}

/// Makes the node tree: directories, PKI (first client certificate, serving pair),
/// kubeconfigs, and the kubelet and runtime binaries.
pub fn provision(lab: &str, layout: &NodeLayout, api_server: Option<&str>) -> Result<(), LabError> {
    let etc = layout.kubeconfigs[0].parent().map(Path::to_path_buf).unwrap_or_default();
    let bin = layout.kubelet_executable.parent().map(Path::to_path_buf).unwrap_or_default();
    let runtime_run = layout.runtime_sockets[0].parent().map(Path::to_path_buf).unwrap_or_default();
    for dir in [&layout.pki_dir, &layout.kubelet_root.join("pods"), &etc, &bin, &runtime_run] {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io("creating", dir, e))?;
    }
    pki::rotate_client(lab, &layout.pki_dir)?;
    let (crt, key) = layout.serving_cert();
    let (crt_text, key_text) = pki::serving(lab);
    std::fs::write(&crt, crt_text).map_err(|e| LabError::io("writing", &crt, e))?;
    pki::write_private(&key, key_text.as_bytes())?;
    write_kubeconfigs(lab, layout, api_server)?;
    // A copy, not a link: the agent knows the kubelet by its executable's inode.
    let exe = current_exe()?;
    std::fs::copy(&exe, &layout.kubelet_executable)
        .map_err(|e| LabError::io("copying the moat-lab binary to", &layout.kubelet_executable, e))?;
    let small = small_binary()?;
    for runtime in &layout.runtime_binaries {
        std::fs::copy(&small, runtime).map_err(|e| LabError::io("copying a runtime stand-in to", runtime, e))?;
    }
    Ok(())
}

/// (Re)writes the three kubeconfigs, naming `api_server` (a URL or host:port).
pub fn write_kubeconfigs(lab: &str, layout: &NodeLayout, api_server: Option<&str>) -> Result<(), LabError> {
    let server = api_server.map(server_url).unwrap_or_else(|| PLACEHOLDER_SERVER.into());
    let current = layout.current_client_cert();
    let client = pki::kubeconfig(lab, &server, Credential::Certificate(&current));
    let bootstrap = pki::kubeconfig(lab, &server, Credential::Token("abcdef.0123456789abcdef"));
    for (path, text) in [(&layout.kubeconfigs[0], &client), (&layout.kubeconfigs[1], &bootstrap), (&layout.kubeconfigs[2], &client)] {
        pki::write_private(path, text.as_bytes())?;
    }
    Ok(())
}

/// `host:port` of an API server given as a URL or as `host:port`.
pub fn host_port(server: &str) -> Option<String> {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)).then(|| authority.to_string())
}

fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    }
}

/// A small executable to stand in for runc: `true` from PATH.
fn small_binary() -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("true"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| LabError::Internal("no `true` executable on PATH to stand in for runc".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_kubeadm() {
        let layout = NodeLayout::of("x");
        assert_eq!(layout.kubelet_root, Path::new("/run/moat/lab/x/node/var/lib/kubelet"));
        assert_eq!(layout.current_client_cert(), Path::new("/run/moat/lab/x/node/var/lib/kubelet/pki/kubelet-client-current.pem"));
        assert_eq!(layout.kubeconfigs[0], Path::new("/run/moat/lab/x/node/etc/kubernetes/kubelet.conf"));
        assert_eq!(layout.kubelet_cgroup, Path::new("/moat-lab-x/kubelet"));
        assert_eq!(
            layout.volume_dir("u", "kubernetes.io~secret", "s"),
            Path::new("/run/moat/lab/x/node/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/s")
        );
    }

    #[test]
    fn api_servers_as_host_port() {
        assert_eq!(host_port("https://127.0.0.1:6443").as_deref(), Some("127.0.0.1:6443"));
        assert_eq!(host_port("http://10.0.0.1:8080/api").as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(host_port("127.0.0.1:99").as_deref(), Some("127.0.0.1:99"));
        assert_eq!(host_port("https://example"), None);
        assert_eq!(server_url("127.0.0.1:1"), "https://127.0.0.1:1");
    }
}
