//! The API server source: list, then watch Namespaces, Pods, Services, NetworkPolicies
//! (networking.k8s.io/v1), ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2, while
//! their CRD is installed: [`cluster_policies`]) and Nodes (their addresses are `nodes`
//! peers'; this agent's own gives the node's labels), reflected into one `Cluster`.
//!
//! - The first state is handed out only after every watch has finished its initial list
//!   (`InitDone`), so the first apply — which prunes whatever an earlier agent left in the
//!   maps — sees the whole cluster.
//! - After that each change wakes the runtime at once ([`KubeSource::changed`]).
//! - Watches resume from the last version seen; failures retry with jittered backoff; an
//!   expired version (410 Gone) re-lists at once, handed over as changes against what was
//!   listed before (see [`reflect`]).
//! - While the API server is unreachable the last state stays enforced (fail-static);
//!   [`SyncState`] says how stale it is and a warning is logged every
//!   [`STALE_LOG_INTERVAL`].
//! - Policy kinds the API server serves and moat does not enforce are found by discovery
//!   ([`discover`]), apart from the model: they never hold up the first state.

pub mod client;
pub mod cluster_policies;
pub mod discover;
pub mod reflect;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::manifests::Loaded;
use super::unenforced::Unenforced;
use super::sync::SyncState;
use crate::model::{Change, Cluster, ObjectKey};

pub const STALE_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster, and no KUBECONFIG or ~/.kube/config; or give --kubeconfig or -f): {0}")]
    Infer(kube::config::InferConfigError),
    #[error("client for the API server {server}: {source}")]
    Client { server: String, source: kube::Error },
}

/// What the runtime tells the source.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Explicit kubeconfig; None: in-cluster, KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// This node: its Node's labels select node profiles. None: no node labels.
    pub node_name: Option<String>,
    /// How often API discovery looks for policy kinds moat does not enforce.
    pub discovery_interval: Duration,
}

/// What the watch tasks have seen and the runtime has not taken yet. Objects themselves
/// live in one place only, the compiler's model: here are just their keys (to turn a
/// re-list into removals) and the changes not yet taken.
#[derive(Default)]
pub struct ModelState {
    pub namespaces: BTreeSet<String>,
    pub pods: BTreeSet<ObjectKey>,
    pub policies: BTreeSet<ObjectKey>,
    pub services: BTreeSet<ObjectKey>,
    pub nodes: BTreeSet<String>,
    pub cluster_policies: BTreeSet<String>,
    /// Changes in the order they were seen, not yet taken by the runtime.
    pub pending: Vec<Change>,
    /// Bit per watch that finished its first list.
    pub initialized: u32,
    /// Highest resourceVersion seen (when the server's versions are numbers).
    pub resource_version: Option<u64>,
}

impl ModelState {
    fn see_version(&mut self, version: Option<u64>) {
        if version > self.resource_version {
            self.resource_version = version;
        }
    }
}

pub struct Shared {
    state: Mutex<ModelState>,
    notify: Notify,
    sync: Arc<SyncState>,
}

impl Shared {
    /// The state; a watch task that panicked while holding it left consistent data (every
    /// update completes under the lock), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, ModelState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One object set (`Some`) or removed (`None`) by a watch event.
    fn changed<K: reflect::Reflected>(
        &self,
        key: K::Key,
        value: Option<K::Value>,
        version: Option<u64>,
    ) {
        let mut state = self.lock();
        state.see_version(version);
        let present = value.is_some();
        // A removal of an object never listed (a refused one) changes nothing.
        let known = if present {
            K::keys(&mut state).insert(key.clone());
            true
        } else {
            K::keys(&mut state).remove(&key)
        };
        if known {
            state.pending.push(K::change(key, value));
            drop(state);
            self.notify.notify_one();
        }
    }

    /// A complete (re-)list: every object listed, and removals for the keys it no longer has.
    fn relisted<K: reflect::Reflected>(
        &self,
        listed: BTreeSet<K::Key>,
        changes: Vec<Change>,
        version: Option<u64>,
    ) {
        let mut state = self.lock();
        state.see_version(version);
        let gone: Vec<K::Key> = K::keys(&mut state).difference(&listed).cloned().collect();
        state.pending.extend(changes);
        state
            .pending
            .extend(gone.into_iter().map(|key| K::change(key, None)));
        *K::keys(&mut state) = listed;
        state.initialized |= 1 << K::WATCH;
        drop(state);
        self.notify.notify_one();
    }
}

impl Shared {
    /// Counts as `K`'s list without changing anything: the kind cannot be read now, and what
    /// it listed before stays.
    fn listed_as_before<K: reflect::Reflected>(&self) {
        let listed = K::keys(&mut self.lock()).clone();
        self.relisted::<K>(listed, Vec::new(), None);
    }
}

pub struct KubeSource {
    shared: Arc<Shared>,
    /// Watches that must finish their first list before the first state is handed out.
    expected: u32,
    tasks: Vec<JoinHandle<()>>,
    unenforced: discover::SharedUnenforced,
    /// Why ClusterNetworkPolicies cannot be read although served (RBAC), if so.
    cluster_policies_forbidden: cluster_policies::SharedForbidden,
    /// This node's name: its Node's changes also change `Cluster::node_labels`.
    node_name: Option<String>,
}

impl KubeSource {
    /// Connects and starts the watches; nothing is listed yet when this returns.
    pub async fn start(options: &KubeOptions) -> Result<Self, KubeError> {
        let client = client::connect(options.kubeconfig.as_deref()).await?;
        tracing::info!(
            config = %client::describe(options.kubeconfig.as_deref()),
            node = options.node_name.as_deref().unwrap_or("(none)"),
            "watching the API server"
        );
        Ok(Self::with_client(client, options.node_name.as_deref(), options.discovery_interval))
    }

    pub fn with_client(client: Client, node_name: Option<&str>, discovery_interval: Duration) -> Self {
        let sync = Arc::new(SyncState::new());
        let shared = Arc::new(Shared {
            state: Mutex::new(ModelState::default()),
            notify: Notify::new(),
            sync,
        });
        let unenforced = discover::SharedUnenforced::default();
        let mut tasks = vec![
            tokio::spawn(discover::run(client.clone(), Arc::clone(&unenforced), discovery_interval)),
            watch_task(Api::<core::Namespace>::all(client.clone()), None, Arc::clone(&shared)),
            watch_task(Api::<core::Pod>::all(client.clone()), None, Arc::clone(&shared)),
            watch_task(Api::<networking::NetworkPolicy>::all(client.clone()), None, Arc::clone(&shared)),
            watch_task(Api::<core::Service>::all(client.clone()), None, Arc::clone(&shared)),
        ];
        let cluster_policies_forbidden = cluster_policies::SharedForbidden::default();
        tasks.push(tokio::spawn(cluster_policies::run(
            client.clone(),
            Arc::clone(&shared),
            Arc::clone(&cluster_policies_forbidden),
            discovery_interval,
        )));
        let expected = 1 << reflect::NAMESPACES
            | 1 << reflect::PODS
            | 1 << reflect::NETWORK_POLICIES
            | 1 << reflect::SERVICES
            | 1 << reflect::CLUSTER_POLICIES
            | 1 << reflect::NODES;
        // Every Node: a `nodes` peer may select any of them.
        tasks.push(watch_task(Api::<core::Node>::all(client), None, Arc::clone(&shared)));
        if node_name.is_none() {
            tracing::warn!("no node name (--node-name or NODE_NAME): node labels are empty and every pod whose cgroup is found is local");
        }
        tasks.push(tokio::spawn(report_staleness(Arc::clone(&shared.sync))));
        Self {
            shared,
            expected,
            tasks,
            unenforced,
            cluster_policies_forbidden,
            node_name: node_name.map(str::to_string),
        }
    }

    /// Policy objects (and kinds) the API server serves that moat does not enforce, as the
    /// last discovery round found them.
    pub fn unenforced(&self) -> Unenforced {
        let mut found = self.unenforced.lock().map(|u| u.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        if let Some(why) = cluster_policies::lock(&self.cluster_policies_forbidden).clone() {
            found.unlisted.insert(cluster_policies::policy_kind(), format!("list forbidden: {why}"));
        }
        found
    }

    /// Waits until every watch has listed once, then returns that state.
    pub async fn initial(&mut self) -> Loaded {
        loop {
            let notified = self.shared.notify.notified();
            {
                let mut state = self.shared.lock();
                if state.initialized & self.expected == self.expected {
                    let changes = with_node_labels(std::mem::take(&mut state.pending), self.node_name.as_deref());
                    drop(state);
                    let mut cluster = Cluster::default();
                    for change in changes {
                        cluster.apply(change);
                    }
                    self.shared.sync.mark_synced();
                    return Loaded {
                        cluster,
                        ..Loaded::default()
                    };
                }
            }
            notified.await;
        }
    }

    /// The changes seen since the last call, if any.
    pub fn poll(&mut self) -> Option<Vec<Change>> {
        let mut state = self.shared.lock();
        if state.pending.is_empty() {
            return None;
        }
        Some(with_node_labels(std::mem::take(&mut state.pending), self.node_name.as_deref()))
    }

    pub async fn changed(&self) {
        self.shared.notify.notified().await;
    }

    pub fn resource_version(&self) -> Option<u64> {
        self.shared.lock().resource_version
    }

    pub fn sync_state(&self) -> Arc<SyncState> {
        Arc::clone(&self.shared.sync)
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `changes`, each change of this node's Node followed by the node labels it sets (a Node
/// removed: none).
fn with_node_labels(changes: Vec<Change>, node_name: Option<&str>) -> Vec<Change> {
    let Some(own) = node_name else { return changes };
    let mut out = Vec::with_capacity(changes.len() + 1);
    for change in changes {
        let labels = match &change {
            Change::Node(name, node) if name == own => Some(node.as_ref().map(|node| node.labels.clone()).unwrap_or_default()),
            _ => None,
        };
        out.push(change);
        out.extend(labels.map(Change::NodeLabels));
    }
    out
}

/// A core kind's list/watch task: only custom resources' watches end, so there is no result.
fn watch_task<K: reflect::Reflected>(api: Api<K>, fields: Option<String>, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        reflect::run(api, fields, shared).await;
    })
}

/// Logs, while any watch fails, how old the enforced state is.
async fn report_staleness(sync: Arc<SyncState>) {
    let mut tick = tokio::time::interval(STALE_LOG_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(stale) = sync.seconds_since_sync().filter(|s| *s > 0.0) {
            tracing::warn!(
                stale_seconds = stale.round() as u64,
                errors = sync.errors(),
                "API server unreachable or failing; the last synced state stays enforced"
            );
        }
    }
}

#[cfg(test)]
mod cluster_policies_tests;
#[cfg(test)]
mod tests;
