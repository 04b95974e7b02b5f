//! The guard's maps: node-wide settings and syscall classes once at start-up; actors
//! (cgroup → pod), protected files and the filesystems they and pods' volumes are on
//! reconciled on every change, writing only the difference.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData};
use aya::{Ebpf, Pod};
use moat_common::guard::{
    names, Actor, DeviceRule, Endpoint, FileKey, FileRule, GuardSettings, SocketPath, ACTOR_EXEMPT, ACTOR_HOST_NETWORK, ACTOR_HOST_PID,
    NS_CGROUP, NS_COUNT, NS_IPC, NS_MNT, NS_NET, NS_PID, NS_UTS,
};
use moat_common::maps::ipv4_mapped;

use crate::config::GuardConfig;
use super::devices;
use super::node::Discovered;
use crate::kernel::maps::take;
use crate::kernel::KernelError;

pub struct GuardMaps {
    settings: Array<MapData, GuardSettings>,
    actors: HashMap<MapData, u64, Actor>,
    files: HashMap<MapData, FileKey, FileRule>,
    devices: HashMap<MapData, u64, DeviceRule>,
    api_servers: HashMap<MapData, Endpoint, u8>,
    ports: HashMap<MapData, u16, u8>,
    socket_paths: HashMap<MapData, SocketPath, FileKey>,
    written_actors: BTreeMap<u64, Actor>,
    written_socket_paths: BTreeMap<SocketPath, FileKey>,
    written_files: BTreeMap<FileKey, FileRule>,
    written_devices: BTreeMap<u64, DeviceRule>,
}

/// Where the pods' cgroups are, for attributing tasks of pods the model does not know yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodsRoot {
    pub id: u64,
    pub level: u32,
}

impl PodsRoot {
    /// `root` below the cgroup v2 mount `mount`.
    pub fn of(root: &Path, mount: &Path) -> std::io::Result<Self> {
        let id = std::fs::metadata(root)?.ino();
        let level = root.strip_prefix(mount).map(|rest| rest.iter().count() as u32).unwrap_or(0);
        Ok(Self { id, level })
    }
}

impl GuardMaps {
    /// Takes the maps. Pinned maps an earlier agent filled are adopted with their content,
    /// so the first sync also removes what that agent left (a pod deleted meanwhile).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let actors: HashMap<MapData, u64, Actor> = take(ebpf, names::GUARD_ACTORS)?;
        let files: HashMap<MapData, FileKey, FileRule> = take(ebpf, names::GUARD_FILES)?;
        let devices: HashMap<MapData, u64, DeviceRule> = take(ebpf, names::GUARD_DEVICES)?;
        let socket_paths: HashMap<MapData, SocketPath, FileKey> = take(ebpf, names::GUARD_SOCKET_PATHS)?;
        Ok(Self {
            settings: take(ebpf, names::GUARD_SETTINGS)?,
            written_actors: actors.iter().filter_map(Result::ok).collect(),
            written_files: files.iter().filter_map(Result::ok).collect(),
            written_devices: devices.iter().filter_map(Result::ok).collect(),
            written_socket_paths: socket_paths.iter().filter_map(Result::ok).collect(),
            socket_paths,
            actors,
            files,
            devices,
            api_servers: take(ebpf, names::GUARD_API_SERVERS)?,
            ports: take(ebpf, names::GUARD_PORTS)?,
        })
    }

    /// Kubelet ports and API servers. Written before `settings`, which
    /// turns the programs on.
    pub fn write_static(&mut self, config: &GuardConfig, api_servers: &[SocketAddr]) -> Result<(), KernelError> {
        replace(&mut self.ports, names::GUARD_PORTS, config.kubelet.ports.iter().map(|p| (*p, 1u8)).collect())?;
        let endpoints = api_servers
            .iter()
            .map(|addr| {
                let bytes = match addr.ip() {
                    std::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
                    std::net::IpAddr::V6(v6) => v6.octets(),
                };
                (Endpoint { addr: bytes, port: addr.port(), _pad: [0; 6] }, 1u8)
            })
            .collect();
        replace(&mut self.api_servers, names::GUARD_API_SERVERS, endpoints)
    }

    pub fn write_settings(&mut self, settings: &GuardSettings) -> Result<(), KernelError> {
        self.settings.set(0, *settings, 0).map_err(|e| KernelError::map(names::GUARD_SETTINGS, e))
    }

    pub fn sync_actors(&mut self, actors: BTreeMap<u64, Actor>) -> Result<(), KernelError> {
        sync(&mut self.actors, names::GUARD_ACTORS, &mut self.written_actors, actors)
    }

    /// Protected files and their filesystems: a file's filesystem is marked before the file
    /// is written and unmarked only after it is removed (`devices::during_change`).
    pub fn sync_node(&mut self, found: &Discovered) -> Result<(), KernelError> {
        let next = devices::devices(&found.files, &found.volumes);
        let during = devices::during_change(&self.written_devices, &next);
        sync(&mut self.devices, names::GUARD_DEVICES, &mut self.written_devices, during)?;
        sync(&mut self.files, names::GUARD_FILES, &mut self.written_files, found.files.clone())?;
        sync(&mut self.devices, names::GUARD_DEVICES, &mut self.written_devices, next)
    }

    /// The (pod, path) pairs cgroup/connect_unix refuses.
    pub fn sync_socket_paths(&mut self, paths: BTreeMap<SocketPath, FileKey>) -> Result<(), KernelError> {
        sync(&mut self.socket_paths, names::GUARD_SOCKET_PATHS, &mut self.written_socket_paths, paths)
    }
}

/// Writes what changed between `written` and `next`, new and changed entries first.
fn sync<K, V>(map: &mut HashMap<MapData, K, V>, name: &'static str, written: &mut BTreeMap<K, V>, next: BTreeMap<K, V>) -> Result<(), KernelError>
where
    K: Pod + Ord + Hash,
    V: Pod + PartialEq,
{
    for (key, value) in &next {
        if written.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(|e| KernelError::map(name, e))?;
        }
    }
    for key in written.keys().filter(|k| !next.contains_key(k)) {
        map.remove(key).map_err(|e| KernelError::map(name, e))?;
    }
    *written = next;
    Ok(())
}

/// Replaces a map's whole content (adopted pins may hold an earlier agent's entries).
fn replace<K, V>(map: &mut HashMap<MapData, K, V>, name: &'static str, next: BTreeMap<K, V>) -> Result<(), KernelError>
where
    K: Pod + Ord,
    V: Pod,
{
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !next.contains_key(k)).collect();
    for (key, value) in &next {
        map.insert(key, value, 0).map_err(|e| KernelError::map(name, e))?;
    }
    for key in stale {
        map.remove(&key).map_err(|e| KernelError::map(name, e))?;
    }
    Ok(())
}

/// A host namespace's inode number: PID 1's (the agent runs with hostPID), else — where PID 1
/// cannot be inspected (a hardened init) — `reference`'s (the kubelet, which runs in the
/// host's namespaces), else the agent's own, which are the host's when it runs on the host.
pub fn host_namespace_of(name: &str, reference: Option<u32>) -> u64 {
    let candidates = std::iter::once("1".to_string()).chain(reference.map(|pid| pid.to_string())).chain(["self".to_string()]);
    for pid in candidates {
        match std::fs::metadata(format!("/proc/{pid}/ns/{name}")) {
            Ok(meta) => return meta.ino(),
            Err(error) => tracing::debug!(namespace = name, pid, %error, "namespace unreadable; trying the next reference"),
        }
    }
    0
}

pub fn host_namespace(name: &str) -> u64 {
    host_namespace_of(name, None)
}

pub fn host_namespaces(reference: Option<u32>) -> [u32; NS_COUNT] {
    let mut out = [0u32; NS_COUNT];
    for (slot, name) in [(NS_UTS, "uts"), (NS_IPC, "ipc"), (NS_MNT, "mnt"), (NS_PID, "pid"), (NS_NET, "net"), (NS_CGROUP, "cgroup")] {
        out[slot] = host_namespace_of(name, reference) as u32;
    }
    out
}

/// The kubelet's pid where PID 1's namespaces cannot be read (None where they can): from its
/// configured cgroup, else the process whose executable is `exe`.
pub fn host_reference(kubelet_cgroup: Option<&Path>, exe: Option<FileKey>) -> Option<u32> {
    if std::fs::metadata("/proc/1/ns/mnt").is_ok() {
        return None;
    }
    let from_cgroup = kubelet_cgroup
        .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .and_then(|text| text.lines().find_map(|l| l.trim().parse().ok()));
    if from_cgroup.is_some() {
        return from_cgroup;
    }
    let exe = exe?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        (super::node::file_key(&entry.path().join("exe")).ok()? == exe).then_some(pid)
    })
}

/// The superblock of the host's /proc (kernel encoding): a /proc/PID/mem opened through it
/// names a host PID. From the host's mount table (PID 1's, else the agent's own).
pub fn host_proc_dev() -> u64 {
    let text = std::fs::read_to_string("/proc/1/mountinfo").or_else(|_| std::fs::read_to_string("/proc/self/mountinfo")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            (fields.get(4) == Some(&"/proc") && fields.get(dash + 1) == Some(&"proc")).then(|| fields.get(2).copied()).flatten()
        })
        .filter_map(|dev| dev.split_once(':').and_then(|(a, b)| Some(moat_common::guard::kernel_dev(a.parse().ok()?, b.parse().ok()?))))
        .next()
        .unwrap_or(0)
}

/// The cgroup this agent runs in when it is a pod's (below `pods_root`), as a cgroup id: the
/// agent's own bpf() calls are not an escape. An agent run on the host (the lab) shares its
/// cgroup with other host processes, which must stay subject to the host-process rules.
pub fn own_cgroup(mount: &Path, pods_root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // In a container's own cgroup namespace this reads `/`: taken below the namespace's root.
    let path = crate::node::cgroup_ns::current(mount).dir(mount, &crate::node::cgroup_ns::unified_path(&text)?);
    if !path.starts_with(pods_root) || path == pods_root {
        return None;
    }
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// `host:port` strings to addresses; unresolvable ones are logged and skipped.
pub fn resolve(servers: &[String]) -> Vec<SocketAddr> {
    servers
        .iter()
        .flat_map(|server| match server.to_socket_addrs() {
            Ok(addrs) => addrs.collect::<Vec<_>>(),
            Err(error) => {
                tracing::warn!(server, %error, "guard.apiServers entry does not resolve; skipped");
                Vec::new()
            }
        })
        .collect()
}

/// The actors map for the current model: every local pod cgroup, exempt ones flagged.
pub fn actors(
    index: &crate::compiler::Index,
    cluster: &crate::model::Cluster,
    config: &GuardConfig,
    own: Option<u64>,
) -> BTreeMap<u64, Actor> {
    let mut out = BTreeMap::new();
    for (cgroup, key) in &index.pods_by_cgroup {
        let pod = cluster.pods.get(key);
        let tag = crate::model::pod_tag::pod_tag(pod.and_then(|p| p.uid.as_deref()), &key.namespace, &key.name);
        let mut flags = 0;
        if config.exempt_namespaces.iter().any(|ns| **ns == *key.namespace) {
            flags |= ACTOR_EXEMPT;
        }
        if pod.is_some_and(|p| p.host_network) {
            flags |= ACTOR_HOST_NETWORK;
        }
        if pod.is_some_and(|p| p.host_pid) {
            flags |= ACTOR_HOST_PID;
        }
        out.insert(*cgroup, Actor { pod: tag, flags, _pad: 0 });
    }
    if let Some(own) = own {
        out.entry(own).or_default().flags |= ACTOR_EXEMPT;
    }
    out
}
