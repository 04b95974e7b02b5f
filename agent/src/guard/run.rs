//! The guard at run time: kernel layout and settings at start-up, then the actors after
//! every change of the model, and the node's protected files, volumes and runtime socket
//! paths (from the filesystem) when pods came or went, or — looked at on every tick — a
//! directory they were found in or the mount table changed, and at least every
//! `FULL_SCAN`. Guard failures are logged and shown in status; they never stop network
//! enforcement.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::Ebpf;
use std::collections::{BTreeMap, BTreeSet};

use moat_common::guard::GuardSettings;
use moat_common::layout::KernelLayout;

use crate::config::GuardConfig;
use super::socket_paths::{PodProcesses, RuntimeSocket, SocketPaths};
use crate::node::cgroups;
use crate::node::dir_watch::{self, DirWatch};
use crate::node::mount_watch::MountWatch;
use super::view::{publish, GuardView, NodeFiles};
use super::kernel_maps::{self, GuardMaps, PodsRoot};
use super::node::{self, Discovered};
use crate::compiler::Index;
use crate::kernel::KernelError;
use crate::model::Cluster;

/// The layout the guard programs read kernel structures with, or why there is none (then
/// the tracepoint detections stay idle; cgroup-hook blocking does not need it).
pub fn kernel_layout() -> (KernelLayout, Option<String>) {
    match crate::kernel::btf_layout::load() {
        Ok(layout) => (layout, None),
        Err(error) => {
            tracing::error!(%error, "kernel BTF layout unavailable: tracepoint detections disabled");
            (KernelLayout::default(), Some(error.to_string()))
        }
    }
}

pub struct Guard {
    maps: GuardMaps,
    config: GuardConfig,
    settings: GuardSettings,
    cgroup_mount: PathBuf,
    own_cgroup: Option<u64>,
    discovered: Discovered,
    pods_by_tag: imbl::OrdMap<u64, crate::model::PodKey>,
    cgroup_root: PathBuf,
    /// Pod cgroup ids → their directories, found again when the set of ids changes.
    pod_dirs: (BTreeSet<u64>, BTreeMap<u64, PathBuf>),
    socket_paths: SocketPaths,
    host: Option<HostIds>,
    /// The directories the last scan of the node read.
    node_watch: DirWatch,
    mounts: MountWatch,
    /// Why the node's files are probably not where the guard looks (logged once a config).
    host_root_warning: Option<String>,
}

/// The node's files are scanned at least this often, for what no watch sees: a file
/// replaced behind a symlink into a directory not watched, or a new mount namespace of a
/// pod's process (whose connects to a runtime socket are still refused by inode).
const FULL_SCAN: Duration = Duration::from_secs(10);
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The host's namespaces and /proc, as last read.
#[derive(Clone, Copy, Default)]
struct HostIds {
    pid_ns: u64,
    ns: [u32; moat_common::guard::NS_COUNT],
    proc_dev: u64,
}

impl Guard {
    pub fn start(
        ebpf: &mut Ebpf,
        config: &GuardConfig,
        cgroup_root: &Path,
        cgroup_mount: &Path,
        api_servers: &[SocketAddr],
    ) -> Result<Self, KernelError> {
        let mut maps = GuardMaps::take(ebpf)?;
        maps.write_static(config, api_servers)?;
        let root = PodsRoot::of(cgroup_root, cgroup_mount)
            .map_err(|source| KernelError::CgroupRoot { path: cgroup_root.into(), source })?;
        let kubelet_cgroup = kubelet_cgroup(config, cgroup_mount);
        // Where cgroup/connect_unix finds the address; (0, 0) before Linux 6.7 keeps it idle.
        let (uaddr, uaddrlen) = crate::kernel::unix_connect::context_offsets().unwrap_or((0, 0));
        let settings = GuardSettings {
            pods_root_cgroup: root.id,
            pods_root_level: root.level,
            ready: 1,
            kubelet_exe_dev: 0,
            kubelet_exe_ino: 0,
            kubelet_cgroup: kubelet_cgroup.unwrap_or(0),
            host_ns: kernel_maps::host_namespaces(None),
            _reserved: 0,
            agent_tgid: std::process::id(),
            sock_addr_uaddr: uaddr,
            sock_addr_uaddrlen: uaddrlen,
        };
        let own_cgroup = kernel_maps::own_cgroup(cgroup_mount, cgroup_root);
        let host_root_warning = host_root_warning(&config.host_root);
        Ok(Self {
            maps,
            config: config.clone(),
            settings,
            cgroup_mount: cgroup_mount.into(),
            own_cgroup,
            discovered: Discovered::default(),
            pods_by_tag: Default::default(),
            cgroup_root: cgroup_root.into(),
            pod_dirs: Default::default(),
            socket_paths: SocketPaths::default(),
            host: None,
            node_watch: DirWatch::new("the guard's node files", dir_watch::ENTRIES_AND_CONTENT, FULL_SCAN),
            mounts: MountWatch::new(Path::new(MOUNTINFO)),
            host_root_warning,
        })
    }

    /// A changed `guard:` configuration while running: ports and API servers rewritten,
    /// node paths found again and settings rewritten on the next refresh.
    pub fn reconfigure(&mut self, config: &GuardConfig, api_servers: &[SocketAddr]) -> Result<(), KernelError> {
        self.maps.write_static(config, api_servers)?;
        self.settings.kubelet_cgroup = kubelet_cgroup(config, &self.cgroup_mount).unwrap_or(0);
        self.settings.ready = 1;
        if config.host_root != self.config.host_root {
            self.host_root_warning = host_root_warning(&config.host_root);
        }
        self.config = config.clone();
        self.discovered = Discovered::default();
        self.socket_paths = SocketPaths::default();
        self.node_watch.mark_due();
        Ok(())
    }

    /// After a change of the model: the actors, and the pod names events show. Reads nothing
    /// from the filesystem, so it stays cheap on the path of every watch event.
    pub fn follow_model(&mut self, index: &Index, cluster: &Cluster) -> Result<(), KernelError> {
        self.sync_actors(index, cluster)?;
        if self.tags_changed(index) {
            self.pods_by_tag = index.pods_by_tag.clone();
            self.publish(false);
        }
        Ok(())
    }

    fn sync_actors(&mut self, index: &Index, cluster: &Cluster) -> Result<(), KernelError> {
        self.maps.sync_actors(kernel_maps::actors(index, cluster, &self.config, self.own_cgroup))
    }

    /// The compiler keeps pod tags up to date; a new map (not the same tree) means a change.
    fn tags_changed(&self, index: &Index) -> bool {
        !index.pods_by_tag.ptr_eq(&self.pods_by_tag)
    }

    /// The view events are named with. The host's namespaces and /proc are read again with
    /// the node's files (on the tick), not for a change of pods.
    fn publish(&mut self, read_host: bool) {
        if read_host || self.host.is_none() {
            let reference = self.host_reference();
            self.host = Some(HostIds {
                pid_ns: kernel_maps::host_namespace_of("pid", reference),
                ns: kernel_maps::host_namespaces(reference),
                proc_dev: kernel_maps::host_proc_dev(),
            });
        }
        let host = self.host.unwrap_or_default();
        let node = NodeFiles {
            host_root: self.config.host_root.clone(),
            protected_files: self.discovered.files.len(),
            pod_volumes: self.discovered.volumes.len(),
            missing: self.discovered.missing.iter().cloned().collect(),
            warning: self.host_root_warning.clone(),
        };
        publish(GuardView {
            names: self.discovered.names.clone(),
            pods_by_tag: self.pods_by_tag.clone(),
            host_pid_ns: host.pid_ns,
            host_ns: host.ns,
            host_proc_dev: host.proc_dev,
            node: Some(node),
        });
    }

    /// Brings actors, files, volumes and runtime socket paths up to date from the model and
    /// the node's filesystem; writes settings when they change. When pod cgroups came or
    /// went (`pods_changed`); on the tick only if the node may have changed since the last
    /// scan, and otherwise the model alone is followed.
    pub fn refresh(&mut self, index: &Index, cluster: &Cluster, pods_changed: bool) -> Result<(), KernelError> {
        // Both watches are asked every time: each answer clears what it reported.
        let mounts_changed = self.mounts.changed();
        let files_changed = self.node_watch.due();
        if !(pods_changed || mounts_changed || files_changed) {
            return self.follow_model(index, cluster);
        }
        self.node_watch.scanning();
        let scanned = self.scan_node(index, cluster);
        if scanned.is_err() {
            self.node_watch.mark_due();
        }
        scanned
    }

    fn scan_node(&mut self, index: &Index, cluster: &Cluster) -> Result<(), KernelError> {
        self.sync_actors(index, cluster)?;
        let mountinfo = std::fs::read_to_string(MOUNTINFO).unwrap_or_default();
        let watch = &mut self.node_watch;
        let found = node::discover(&self.config, &mountinfo, &mut |dir| watch.watch(dir));
        let tags_changed = self.tags_changed(index);
        if found != self.discovered || tags_changed {
            for path in found.missing.difference(&self.discovered.missing) {
                tracing::info!(path = %path.display(), "guard: configured node path not found; skipped");
            }
            if found.skipped_volume_files > 0 {
                tracing::warn!(skipped = found.skipped_volume_files, "guard: too many files in disk-backed pod volumes; some are not protected");
            }
            self.maps.sync_node(&found)?;
            self.pods_by_tag = index.pods_by_tag.clone();
            self.discovered = found;
            self.publish(true);
        }
        self.sync_socket_paths(index, cluster)?;
        let (dev, ino) = self.discovered.kubelet_exe.map(|k| (k.dev, k.ino)).unwrap_or((0, 0));
        let host_ns = self.host.map_or(self.settings.host_ns, |host| host.ns);
        let changed = (dev, ino) != (self.settings.kubelet_exe_dev, self.settings.kubelet_exe_ino) || host_ns != self.settings.host_ns;
        if changed || self.settings.ready == 1 {
            self.settings.kubelet_exe_dev = dev;
            self.settings.kubelet_exe_ino = ino;
            self.settings.host_ns = host_ns;
            // `ready` 2 marks "written once"; the programs only test it for nonzero.
            self.settings.ready = 2;
            self.maps.write_settings(&self.settings)?;
        }
        Ok(())
    }

    /// Every path under which each (non-exempt) pod reaches a runtime socket, for
    /// cgroup/connect_unix. Paths beyond the map's capacity are left out with a warning;
    /// the sys_exit check still stops connects through them.
    fn sync_socket_paths(&mut self, index: &Index, cluster: &Cluster) -> Result<(), KernelError> {
        let ids: BTreeSet<u64> = index.pods_by_cgroup.keys().copied().collect();
        if ids != self.pod_dirs.0 {
            match cgroups::paths(&self.cgroup_root, &ids) {
                Ok(dirs) => self.pod_dirs = (ids, dirs),
                Err(error) => tracing::warn!(%error, "guard: finding pod cgroup directories failed; runtime socket paths not updated"),
            }
        }
        let mut pods: BTreeMap<u64, PodProcesses> = BTreeMap::new();
        for (cgroup, key) in &index.pods_by_cgroup {
            if self.config.exempt_namespaces.iter().any(|ns| **ns == *key.namespace) {
                continue;
            }
            let Some(dir) = self.pod_dirs.1.get(cgroup) else { continue };
            let uid = cluster.pods.get(key).and_then(|p| p.uid.as_deref());
            let tag = crate::model::pod_tag::pod_tag(uid, &key.namespace, &key.name);
            pods.entry(tag).or_insert_with(|| PodProcesses { tag, cgroups: Vec::new() }).cgroups.push(dir.clone());
        }
        let sockets: Vec<RuntimeSocket> =
            self.discovered.sockets.iter().map(|(file, path)| RuntimeSocket { path: path.clone(), file: *file }).collect();
        let pods: Vec<PodProcesses> = pods.into_values().collect();
        let mut paths = self.socket_paths.compute(&sockets, &pods);
        let capacity = moat_common::guard::capacity::GUARD_SOCKET_PATHS as usize;
        if paths.len() > capacity {
            tracing::warn!(paths = paths.len(), capacity, "guard: more runtime socket paths than the map holds; the rest are stopped at sys_exit only");
            paths = paths.into_iter().take(capacity).collect();
        }
        self.maps.sync_socket_paths(paths)
    }

    /// Where PID 1's namespaces cannot be read (a hardened init), a process known to run in
    /// the host's: the kubelet. The agent's own are not, once it runs in a container.
    fn host_reference(&self) -> Option<u32> {
        kernel_maps::host_reference(kubelet_cgroup_dir(&self.config, &self.cgroup_mount).as_deref(), self.discovered.kubelet_exe)
    }

    /// Whether cgroup/connect_unix can find the address (its offsets came from BTF).
    pub fn unix_connect_ready(&self) -> bool {
        self.settings.sock_addr_uaddr != 0 && self.settings.sock_addr_uaddrlen != 0
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    pub fn discovered(&self) -> &Discovered {
        &self.discovered
    }
}

/// Why the guard would not find the node's files where `host_root` says they are: not a
/// directory, or `/` while the agent runs in a mount namespace other than the host's (a
/// container without the node's `/` mounted), where every node path is the container's.
fn host_root_warning(host_root: &Path) -> Option<String> {
    let warning = if host_root != Path::new("/") {
        (!host_root.is_dir()).then(|| format!("guard.hostRoot {} is not a directory: no node file is protected", host_root.display()))
    } else {
        let host = std::fs::metadata("/proc/1/ns/mnt").ok()?.ino();
        let own = std::fs::metadata("/proc/self/ns/mnt").ok()?.ino();
        (host != own).then(|| {
            "the agent runs in a mount namespace of its own and guard.hostRoot is /: it reads the container's files, \
             not the node's; mount the node's / (deploy/daemonset.yaml mounts it at /host) and set guard.hostRoot"
                .to_string()
        })
    };
    if let Some(warning) = &warning {
        tracing::warn!("guard: {warning}");
    }
    warning
}

/// The kubelet's configured cgroup directory.
fn kubelet_cgroup_dir(config: &GuardConfig, cgroup_mount: &Path) -> Option<PathBuf> {
    let configured = config.kubelet.cgroup.as_ref()?;
    Some(cgroup_mount.join(configured.strip_prefix("/").unwrap_or(configured)))
}

/// The kubelet's cgroup id, if configured and present.
fn kubelet_cgroup(config: &GuardConfig, cgroup_mount: &Path) -> Option<u64> {
    let path = kubelet_cgroup_dir(config, cgroup_mount)?;
    match std::fs::metadata(&path) {
        Ok(meta) => Some(meta.ino()),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "guard.kubelet.cgroup not found; the kubelet is recognised by its executable alone");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_root_that_is_not_a_directory_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_root_warning(dir.path()), None);
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        for root in [dir.path().join("absent"), file] {
            let warning = host_root_warning(&root).unwrap_or_default();
            assert!(warning.contains(&format!("guard.hostRoot {} is not a directory", root.display())), "{warning}");
        }
    }
}
