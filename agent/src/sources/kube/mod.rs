//! The API server source: list, then watch Namespaces, Pods, NetworkPolicies
//! (networking.k8s.io/v1) and this agent's own Node, reflected into one `Cluster`.
//!
//! - The first state is handed out only after every watch has finished its initial list
//!   (`InitDone`), so the first apply — which prunes whatever an earlier agent left in the
//!   maps — sees the whole cluster.
//! - After that each change wakes the runtime at once ([`KubeSource::changed`]).
//! - Watch errors are retried with backoff and jitter; an expired resourceVersion (410 Gone)
//!   re-lists, swapped in whole when the list is complete.
//! - While the API server is unreachable the last state stays enforced (fail-static);
//!   [`SyncState`] says how stale it is and a warning is logged every
//!   [`STALE_LOG_INTERVAL`].

pub mod client;
pub mod reflect;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::manifests::Loaded;
use super::SyncState;
use crate::model::{Cluster, Labels};

pub const STALE_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (not in a cluster, and no KUBECONFIG or ~/.kube/config; or give --kubeconfig or -f): {0}")]
    Infer(kube::config::InferConfigError),
    #[error("client for the API server {server}: {source}")]
    Client { server: String, source: kube::Error },
}

/// What the runtime tells the source.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Explicit kubeconfig; None: in-cluster, KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// This node: its Node object is watched for its labels. None: no Node watch.
    pub node_name: Option<String>,
}

/// The reflected state, shared by the watch tasks and the source.
#[derive(Default)]
pub struct ModelState {
    pub cluster: Cluster,
    /// This node's Node object (at most one), name → labels.
    pub nodes: BTreeMap<String, Labels>,
    /// Bit per watch that finished its first list.
    pub initialized: u32,
    /// Bumped on every change of `cluster` or `nodes`.
    pub generation: u64,
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
    /// update is one assignment), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, ModelState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self, mut state: MutexGuard<'_, ModelState>, changed: bool) {
        if changed {
            state.generation += 1;
            drop(state);
            self.notify.notify_one();
        }
    }
}

pub struct KubeSource {
    shared: Arc<Shared>,
    /// Watches that must finish their first list before the first state is handed out.
    expected: u32,
    /// Generation last handed out by `poll`.
    seen: u64,
    tasks: Vec<JoinHandle<()>>,
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
        Ok(Self::with_client(client, options.node_name.as_deref()))
    }

    pub fn with_client(client: Client, node_name: Option<&str>) -> Self {
        let sync = Arc::new(SyncState::new());
        let shared = Arc::new(Shared { state: Mutex::new(ModelState::default()), notify: Notify::new(), sync });
        let config = watcher::Config::default();
        let mut tasks = vec![
            tokio::spawn(reflect::run(Api::<core::Namespace>::all(client.clone()), config.clone(), Arc::clone(&shared))),
            tokio::spawn(reflect::run(Api::<core::Pod>::all(client.clone()), config.clone(), Arc::clone(&shared))),
            tokio::spawn(reflect::run(Api::<networking::NetworkPolicy>::all(client.clone()), config.clone(), Arc::clone(&shared))),
        ];
        let mut expected = 1 << reflect::NAMESPACES | 1 << reflect::PODS | 1 << reflect::NETWORK_POLICIES;
        match node_name {
            Some(node) => {
                let config = config.fields(&format!("metadata.name={node}"));
                tasks.push(tokio::spawn(reflect::run(Api::<core::Node>::all(client), config, Arc::clone(&shared))));
                expected |= 1 << reflect::NODE;
            }
            None => tracing::warn!("no node name (--node-name or NODE_NAME): node labels are empty and every pod whose cgroup is found is local"),
        }
        tasks.push(tokio::spawn(report_staleness(Arc::clone(&shared.sync))));
        Self { shared, expected, seen: 0, tasks }
    }

    /// Waits until every watch has listed once, then returns that state.
    pub async fn initial(&mut self) -> Loaded {
        loop {
            let notified = self.shared.notify.notified();
            {
                let state = self.shared.lock();
                if state.initialized & self.expected == self.expected {
                    self.seen = state.generation;
                    let cluster = snapshot(&state);
                    drop(state);
                    self.shared.sync.mark_synced();
                    return Loaded { cluster, ..Loaded::default() };
                }
            }
            notified.await;
        }
    }

    /// The newest state, if it changed since the last call.
    pub fn poll(&mut self) -> Option<Loaded> {
        let state = self.shared.lock();
        if state.generation == self.seen {
            return None;
        }
        self.seen = state.generation;
        Some(Loaded { cluster: snapshot(&state), ..Loaded::default() })
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

fn snapshot(state: &ModelState) -> Cluster {
    let mut cluster = state.cluster.clone();
    cluster.node_labels = state.nodes.values().next().cloned().unwrap_or_default();
    cluster
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
mod tests;
