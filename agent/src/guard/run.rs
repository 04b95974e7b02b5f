//! The guard at run time: kernel layout and settings at start-up, then on every tick the
//! actors (from the model) and the node's protected files and volumes (from the
//! filesystem). Guard failures are logged and shown in status; they never stop network
//! enforcement.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use moat_common::guard::GuardSettings;
use moat_common::layout::KernelLayout;

use super::config::GuardConfig;
use super::decode::{publish, GuardView};
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
    pods_by_tag: std::collections::BTreeMap<u64, crate::model::PodKey>,
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
        let kubelet_cgroup = config.kubelet.cgroup.as_ref().and_then(|c| {
            let path = cgroup_mount.join(c.strip_prefix("/").unwrap_or(c));
            match std::fs::metadata(&path) {
                Ok(meta) => Some(meta.ino()),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "guard.kubelet.cgroup not found; the kubelet is recognised by its executable alone");
                    None
                }
            }
        });
        // Where cgroup/connect_unix finds the address; (0, 0) before Linux 6.7 keeps it idle.
        let (uaddr, uaddrlen) = crate::kernel::unix_connect::context_offsets().unwrap_or((0, 0));
        let settings = GuardSettings {
            pods_root_cgroup: root.id,
            pods_root_level: root.level,
            ready: 1,
            kubelet_exe_dev: 0,
            kubelet_exe_ino: 0,
            kubelet_cgroup: kubelet_cgroup.unwrap_or(0),
            host_ns: kernel_maps::host_namespaces(),
            lsm_hooks: 0,
            agent_tgid: std::process::id(),
            sock_addr_uaddr: uaddr,
            sock_addr_uaddrlen: uaddrlen,
        };
        let own_cgroup = kernel_maps::own_cgroup(cgroup_mount, cgroup_root);
        Ok(Self { maps, config: config.clone(), settings, cgroup_mount: cgroup_mount.into(), own_cgroup, discovered: Discovered::default(), pods_by_tag: Default::default() })
    }

    /// Brings actors, files and volumes up to date; writes settings when they change.
    pub fn refresh(&mut self, index: &Index, cluster: &Cluster) -> Result<(), KernelError> {
        let actors = kernel_maps::actors(index, cluster, &self.config, self.own_cgroup);
        self.maps.sync_actors(actors)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let found = node::discover(&self.config, &mountinfo);
        let pods_by_tag: std::collections::BTreeMap<u64, crate::model::PodKey> = cluster
            .pods
            .iter()
            .map(|(key, pod)| (node::pod_tag(pod.uid.as_deref(), &key.namespace, &key.name), key.clone()))
            .collect();
        if found != self.discovered || pods_by_tag != self.pods_by_tag {
            for path in found.missing.difference(&self.discovered.missing) {
                tracing::info!(path = %path.display(), "guard: configured node path not found; skipped");
            }
            if found.skipped_volume_files > 0 {
                tracing::warn!(skipped = found.skipped_volume_files, "guard: too many files in disk-backed pod volumes; some are not protected");
            }
            self.maps.sync_node(&found)?;
            publish(GuardView {
                names: found.names.clone(),
                pods_by_tag: pods_by_tag.clone(),
                host_pid_ns: kernel_maps::host_namespace("pid"),
                host_proc_dev: kernel_maps::host_proc_dev(),
            });
            self.discovered = found;
            self.pods_by_tag = pods_by_tag;
        }
        let (dev, ino) = self.discovered.kubelet_exe.map(|k| (k.dev, k.ino)).unwrap_or((0, 0));
        if (dev, ino) != (self.settings.kubelet_exe_dev, self.settings.kubelet_exe_ino) || self.settings.ready == 1 {
            self.settings.kubelet_exe_dev = dev;
            self.settings.kubelet_exe_ino = ino;
            // `ready` 2 marks "written once"; the programs only test it for nonzero.
            self.settings.ready = 2;
            self.maps.write_settings(&self.settings)?;
        }
        Ok(())
    }

    /// The BPF LSM hooks attached: tracepoint paths they cover stop reporting.
    pub fn set_lsm_hooks(&mut self, hooks: u32) -> Result<(), KernelError> {
        self.settings.lsm_hooks = hooks;
        if self.settings.ready != 0 {
            self.maps.write_settings(&self.settings)?;
        }
        Ok(())
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    pub fn discovered(&self) -> &Discovered {
        &self.discovered
    }
}
