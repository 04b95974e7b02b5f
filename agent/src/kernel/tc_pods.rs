//! Keeps the ICMP program on the interfaces of every pod on this node, CNI-agnostic: for each
//! pod cgroup the node scan found, a process in it leads to the pod's network namespace, and
//! the program goes on every non-loopback interface there (`kernel::tc`, on a thread inside
//! that namespace). Pods sharing the agent's namespace (hostNetwork) are skipped.
//!
//! Called on every tick. A pod without a process or interfaces yet (the CNI not done) is
//! simply looked at again on the next tick; a pod whose interfaces carry the program only
//! when pod cgroups changed or every `SETTLED_RECHECK`, so an idle node's /proc is not read
//! on every tick. What triggers work is a change of the pod's namespace or of its interface
//! names (read from /proc, without entering the namespace), plus a re-attach every
//! `VERIFY_INTERVAL` that catches links removed behind the agent's back.
//! Failures are counted, logged with pod, program and hook, and retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::SchedClassifier;

use super::tc::{self, Mode, Outcome};
use super::KernelError;
use crate::compiler::Index;
use crate::model::Cluster;
use crate::node::cgroups::{self, PodCgroups, PodRef};
use crate::node::netns::{self, NetnsId};

const VERIFY_INTERVAL: Duration = Duration::from_secs(30);
/// How often a pod whose interfaces carry the program is looked at for new ones (a CNI
/// adds a pod's interfaces before its containers run; a later one is rare).
const SETTLED_RECHECK: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What `moat status` shows about the ICMP program.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcStatus {
    pub program: &'static str,
    pub hook: &'static str,
    pub mode: &'static str,
    /// Pods whose interfaces carry the program.
    pub pods_attached: usize,
    pub interfaces: usize,
    /// Pods without a process or a non-loopback interface yet, or failing.
    pub pods_waiting: usize,
    /// Pods in the agent's own network namespace: nothing to attach to.
    pub pods_host_network: usize,
    /// Attach attempts that failed since the agent started.
    pub attach_failures: u64,
    /// Why the program is not in use at all (it does not load on this kernel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl TcStatus {
    /// The program could not be loaded: ICMP echo into pods is not enforced.
    pub fn unavailable(reason: String) -> Self {
        Self {
            program: super::tc::PROGRAM,
            hook: "tc/ingress",
            mode: "none",
            pods_attached: 0,
            interfaces: 0,
            pods_waiting: 0,
            pods_host_network: 0,
            attach_failures: 0,
            unavailable: Some(reason),
        }
    }
}

#[derive(Default)]
struct PodState {
    /// The namespace and interface names the program was last put on.
    done: Option<(NetnsId, Vec<String>)>,
    interfaces: usize,
    verified_at: Option<Instant>,
    /// When the pod's namespace and interfaces were last read.
    checked_at: Option<Instant>,
    host_network: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

pub struct TcPods {
    program_id: u32,
    mode: Mode,
    pin_root: PathBuf,
    cgroup_root: PathBuf,
    own_netns: Option<NetnsId>,
    /// Cgroup directories of each pod, rebuilt when the node's pod cgroups change.
    dirs: BTreeMap<PodRef, Vec<PathBuf>>,
    cgroup_ids: BTreeSet<u64>,
    pods: BTreeMap<PodRef, PodState>,
    failures: u64,
}

impl TcPods {
    pub fn new(program_id: u32, mode: Mode, pin_root: &Path, cgroup_root: &Path) -> Self {
        let own_netns = netns::own()
            .inspect_err(|error| tracing::warn!(%error, "the agent's own network namespace is unknown; hostNetwork pods are recognised from the model only"))
            .ok();
        Self {
            program_id,
            mode,
            pin_root: pin_root.into(),
            cgroup_root: cgroup_root.into(),
            own_netns,
            dirs: BTreeMap::new(),
            cgroup_ids: BTreeSet::new(),
            pods: BTreeMap::new(),
            failures: 0,
        }
    }

    /// One pass over the pods in `cgroups` (this node's); settled pods too when `all`.
    /// `index` and `cluster` name them and say which are hostNetwork.
    pub fn reconcile(&mut self, program: &mut SchedClassifier, cgroups: &PodCgroups, index: &Index, cluster: &Cluster, all: bool) {
        let ids: BTreeSet<u64> = cgroups.keys().copied().collect();
        if ids != self.cgroup_ids {
            self.refresh_dirs(cgroups, ids);
        }
        let now = Instant::now();
        // The model knows a pod by any of its cgroups; the lowest will do.
        let mut first_cgroup: BTreeMap<&PodRef, u64> = BTreeMap::new();
        for (id, pod) in cgroups {
            first_cgroup.entry(pod).or_insert(*id);
        }
        let refs: Vec<PodRef> = self.dirs.keys().cloned().collect();
        for pod in refs {
            let key = first_cgroup.get(&pod).and_then(|id| index.pods_by_cgroup.get(id));
            let name = key.map(ToString::to_string).unwrap_or_else(|| display(&pod));
            let host_network = key.and_then(|key| cluster.pods.get(key)).is_some_and(|p| p.host_network);
            self.reconcile_pod(program, &pod, &name, host_network, now, all);
        }
    }

    fn reconcile_pod(&mut self, program: &mut SchedClassifier, pod: &PodRef, name: &str, host_network: bool, now: Instant, all: bool) {
        let pin_dir = pin_dir(&self.pin_root, pod);
        let dirs = self.dirs.get(pod).cloned().unwrap_or_default();
        let state = self.pods.entry(pod.clone()).or_default();
        state.host_network = host_network;
        if host_network {
            return;
        }
        let settled = state.done.is_some() && state.checked_at.is_some_and(|at| now.duration_since(at) < SETTLED_RECHECK);
        if settled && !all {
            return;
        }
        state.checked_at = Some(now);
        // No process yet (or it just exited): look again next tick.
        let Some(pid) = netns::process_in(&dirs) else { return };
        let Ok(pod_netns) = netns::of_process(pid) else { return };
        if Some(pod_netns.id) == self.own_netns {
            state.host_network = true;
            return;
        }
        let fingerprint = (pod_netns.id, pod_netns.interfaces.clone());
        let verified = state.verified_at.is_some_and(|at| now.duration_since(at) < VERIFY_INTERVAL);
        if state.done.as_ref() == Some(&fingerprint) && verified {
            return;
        }
        if state.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let (program_id, mode, netns_id) = (self.program_id, self.mode, pod_netns.id);
        let result = netns::run_in(&pod_netns, || tc::attach_here(program, program_id, mode, &pin_dir, netns_id))
            .map_err(|e| KernelError::Program { program: tc::PROGRAM, hook: tc::HOOK, message: e.to_string() })
            .and_then(|attached| attached);
        match result {
            Ok(attached) => {
                if state.done.as_ref() != Some(&fingerprint) {
                    let names = |wanted: Outcome| -> Vec<&str> {
                        attached.iter().filter(|(_, how)| *how == wanted).map(|(i, _)| i.name.as_str()).collect()
                    };
                    tracing::info!(
                        pod = %name, program = tc::PROGRAM, hook = tc::HOOK, mode = mode.name(), netns = netns_id.ino,
                        created = ?names(Outcome::Created), adopted = ?names(Outcome::Adopted), kept = ?names(Outcome::Kept),
                        "ICMP program attached"
                    );
                }
                state.interfaces = attached.len();
                state.done = Some(fingerprint);
                state.verified_at = Some(now);
                state.retry_at = None;
                state.backoff = Duration::ZERO;
            }
            Err(error) => {
                self.failures += 1;
                state.done = None;
                state.interfaces = 0;
                state.backoff = (state.backoff * 2).clamp(FIRST_RETRY, MAX_RETRY);
                state.retry_at = Some(now + state.backoff);
                tracing::warn!(pod = %name, program = tc::PROGRAM, hook = tc::HOOK, %error, retry_in_s = state.backoff.as_secs(), "attaching the ICMP program failed");
            }
        }
    }

    /// The pods' cgroup directories after the node's pod cgroups changed; pods gone lose
    /// their pins (their namespace, and with it the links, is gone or going).
    fn refresh_dirs(&mut self, cgroups: &PodCgroups, ids: BTreeSet<u64>) {
        let paths = match cgroups::paths(&self.cgroup_root, &ids) {
            Ok(paths) => paths,
            Err(error) => {
                tracing::error!(%error, "finding pod cgroup directories failed; ICMP program attachment waits");
                return;
            }
        };
        let mut dirs: BTreeMap<PodRef, Vec<PathBuf>> = BTreeMap::new();
        for (id, pod) in cgroups {
            let entry = dirs.entry(pod.clone()).or_default();
            entry.extend(paths.get(id).cloned());
            // Parents first: the shortest path is the pod's own cgroup.
            entry.sort();
        }
        self.pods.retain(|pod, _| dirs.contains_key(pod));
        let keep: BTreeSet<PathBuf> = dirs.keys().map(|pod| pin_dir(&self.pin_root, pod)).collect();
        for stale in stale_pin_dirs(&self.pin_root, &keep) {
            match tc::remove_pod(&stale) {
                Ok(()) => tracing::info!(pins = %stale.display(), "pod gone from this node; its ICMP program pins removed"),
                Err(error) => tracing::warn!(%error, "removing a gone pod's ICMP program pins failed"),
            }
        }
        self.dirs = dirs;
        self.cgroup_ids = ids;
    }

    pub fn status(&self) -> TcStatus {
        let attached = self.pods.values().filter(|p| !p.host_network && p.interfaces > 0);
        TcStatus {
            program: tc::PROGRAM,
            hook: tc::HOOK,
            mode: self.mode.name(),
            pods_attached: attached.clone().count(),
            interfaces: attached.map(|p| p.interfaces).sum(),
            pods_waiting: self.pods.values().filter(|p| !p.host_network && p.interfaces == 0).count(),
            pods_host_network: self.pods.values().filter(|p| p.host_network).count(),
            attach_failures: self.failures,
            unavailable: None,
        }
    }
}

/// `<root>/<namespace>/<name>` (lab layout), or `<root>/<uid>` (kubelet layout): one path
/// component per name, each well below the 255-byte limit.
fn pin_dir(root: &Path, pod: &PodRef) -> PathBuf {
    match pod {
        PodRef::Key(key) => root.join(&*key.namespace).join(&*key.name),
        PodRef::Uid(uid) => root.join(uid),
    }
}

fn display(pod: &PodRef) -> String {
    match pod {
        PodRef::Key(key) => key.to_string(),
        PodRef::Uid(uid) => format!("uid {uid}"),
    }
}

/// Pod pin directories below `root` (one or two levels deep) that are not in `keep`.
fn stale_pin_dirs(root: &Path, keep: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if keep.contains(&path) {
            continue;
        }
        if !keep.iter().any(|kept| kept.starts_with(&path)) {
            stale.push(path);
            continue;
        }
        // A namespace directory some of whose pods remain.
        for child in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if !keep.contains(&child.path()) {
                stale.push(child.path());
            }
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodKey;

    #[test]
    fn pin_dirs_name_the_pod_and_stale_ones_are_found() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (PodRef::Key(PodKey::new("x", "a")), PodRef::Key(PodKey::new("x", "b")));
        let (c, uid) = (PodRef::Key(PodKey::new("y", "c")), PodRef::Uid("0f-1".into()));
        for pod in [&a, &b, &c, &uid] {
            std::fs::create_dir_all(pin_dir(root.path(), pod)).unwrap();
        }
        assert_eq!(pin_dir(root.path(), &a), root.path().join("x/a"));
        assert_eq!(pin_dir(root.path(), &uid), root.path().join("0f-1"));
        let keep: BTreeSet<PathBuf> = [&a, &uid].iter().map(|pod| pin_dir(root.path(), pod)).collect();
        let mut stale = stale_pin_dirs(root.path(), &keep);
        stale.sort();
        assert_eq!(stale, [root.path().join("x/b"), root.path().join("y")]);
    }
}
