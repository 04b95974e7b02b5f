//! One watch per resource, reflected straight into the model: a watch event is converted
//! (with the manifests source's code) and applied to the shared `Cluster`. A (re-)list is
//! buffered and swapped in whole at `InitDone`, as kube-runtime's reflector store does, so a
//! re-list never shows a half-listed cluster. Keeping model objects instead of API objects
//! keeps memory proportional to what moat uses.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{ModelState, Shared};
use crate::model::{self, Labels, ObjectKey};
use crate::sources::convert::{self, Rejection};

/// Watch numbers, for [`crate::sources::SyncState`] and the InitDone mask.
pub const NAMESPACES: u32 = 0;
pub const PODS: u32 = 1;
pub const NETWORK_POLICIES: u32 = 2;
pub const NODE: u32 = 3;

/// An API resource moat reflects into the model.
pub trait Reflected: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const WATCH: u32;
    const KIND: &'static str;
    type Key: Ord + Clone + Display + Send;
    type Value: Clone + PartialEq + Send;
    fn key(&self) -> Result<Self::Key, Rejection>;
    /// None: valid, but not part of the model (a finished pod).
    fn convert(self) -> Result<Option<Self::Value>, Rejection>;
    fn slot(state: &mut ModelState) -> &mut BTreeMap<Self::Key, Self::Value>;
}

impl Reflected for core::Namespace {
    const WATCH: u32 = NAMESPACES;
    const KIND: &'static str = "Namespace";
    type Key = String;
    type Value = model::Namespace;
    fn key(&self) -> Result<String, Rejection> {
        convert::name(&self.metadata)
    }
    fn convert(self) -> Result<Option<model::Namespace>, Rejection> {
        convert::namespace(&self).map(Some)
    }
    fn slot(state: &mut ModelState) -> &mut BTreeMap<String, model::Namespace> {
        &mut state.cluster.namespaces
    }
}

impl Reflected for core::Pod {
    const WATCH: u32 = PODS;
    const KIND: &'static str = "Pod";
    type Key = ObjectKey;
    type Value = model::Pod;
    fn key(&self) -> Result<ObjectKey, Rejection> {
        convert::namespaced_key(&self.metadata)
    }
    fn convert(self) -> Result<Option<model::Pod>, Rejection> {
        let pod = convert::pod(&self)?;
        Ok((!convert::pod_finished(&self)).then_some(pod))
    }
    fn slot(state: &mut ModelState) -> &mut BTreeMap<ObjectKey, model::Pod> {
        &mut state.cluster.pods
    }
}

impl Reflected for networking::NetworkPolicy {
    const WATCH: u32 = NETWORK_POLICIES;
    const KIND: &'static str = "NetworkPolicy";
    type Key = ObjectKey;
    type Value = networking::NetworkPolicy;
    fn key(&self) -> Result<ObjectKey, Rejection> {
        convert::namespaced_key(&self.metadata)
    }
    fn convert(mut self) -> Result<Option<networking::NetworkPolicy>, Rejection> {
        convert::network_policy(&self)?;
        // Bookkeeping the model never reads.
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        Ok(Some(self))
    }
    fn slot(state: &mut ModelState) -> &mut BTreeMap<ObjectKey, networking::NetworkPolicy> {
        &mut state.cluster.network_policies
    }
}

impl Reflected for core::Node {
    const WATCH: u32 = NODE;
    const KIND: &'static str = "Node";
    type Key = String;
    type Value = Labels;
    fn key(&self) -> Result<String, Rejection> {
        convert::name(&self.metadata)
    }
    fn convert(self) -> Result<Option<Labels>, Rejection> {
        convert::node(&self).map(|(_, labels)| Some(labels))
    }
    fn slot(state: &mut ModelState) -> &mut BTreeMap<String, Labels> {
        &mut state.nodes
    }
}

/// Runs the watch of `K` until the task is aborted. Errors are retried with kube-runtime's
/// default backoff (exponential, with jitter); an expired resourceVersion re-lists.
pub async fn run<K: Reflected>(api: Api<K>, config: watcher::Config, shared: Arc<Shared>) {
    let mut stream = pin!(watcher(api, config).default_backoff());
    let mut buffer: Option<BTreeMap<K::Key, K::Value>> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                shared.sync.ok(K::WATCH);
                handle(event, &mut buffer, &shared);
            }
            Err(error) => {
                shared.sync.failed(K::WATCH);
                tracing::warn!(kind = K::KIND, %error, "watch failed; retrying with backoff, the last synced state stays enforced");
            }
        }
    }
}

fn handle<K: Reflected>(event: Event<K>, buffer: &mut Option<BTreeMap<K::Key, K::Value>>, shared: &Shared) {
    match event {
        Event::Init => *buffer = Some(BTreeMap::new()),
        Event::InitApply(object) => {
            let version = resource_version(&object);
            let Some(listed) = buffer.as_mut() else { return };
            let Ok(key) = checked(object.key(), &object) else { return };
            match checked(object.clone().convert(), &object) {
                Ok(Some(value)) => {
                    listed.insert(key, value);
                }
                Ok(None) => {}
                // Refused: its last good version (if any) stays.
                Err(()) => {
                    if let Some(old) = K::slot(&mut shared.lock()).get(&key) {
                        listed.insert(key, old.clone());
                    }
                }
            }
            shared.lock().see_version(version);
        }
        Event::InitDone => {
            let listed = buffer.take().unwrap_or_default();
            let count = listed.len();
            let mut state = shared.lock();
            let changed = *K::slot(&mut state) != listed;
            *K::slot(&mut state) = listed;
            let first = state.initialized & (1 << K::WATCH) == 0;
            state.initialized |= 1 << K::WATCH;
            if changed || first {
                state.generation += 1;
            }
            drop(state);
            shared.sync.listed();
            tracing::info!(kind = K::KIND, objects = count, "listed");
            shared.notify.notify_one();
        }
        Event::Apply(object) => {
            let version = resource_version(&object);
            let Ok(key) = checked(object.key(), &object) else { return };
            let converted = checked(object.clone().convert(), &object);
            let mut state = shared.lock();
            state.see_version(version);
            let changed = match converted {
                Ok(Some(value)) => {
                    let slot = K::slot(&mut state);
                    let changed = slot.get(&key) != Some(&value);
                    slot.insert(key, value);
                    changed
                }
                Ok(None) => K::slot(&mut state).remove(&key).is_some(),
                Err(()) => false,
            };
            shared.bump(state, changed);
        }
        Event::Delete(object) => {
            let version = resource_version(&object);
            let Ok(key) = checked(object.key(), &object) else { return };
            let mut state = shared.lock();
            state.see_version(version);
            let changed = K::slot(&mut state).remove(&key).is_some();
            shared.bump(state, changed);
        }
    }
}

/// Logs a refused object the way the manifests source words it (`Kind ns/name: field:
/// message`) and drops the error.
fn checked<K: Reflected, T>(result: Result<T, Rejection>, object: &K) -> Result<T, ()> {
    result.map_err(|rejection| {
        let object_name = convert::describe_object(K::KIND, object.meta());
        tracing::error!(
            error = %format!("{object_name}: {rejection}"),
            "object refused; its last good version (if any) stays enforced"
        );
    })
}

fn resource_version<K: Reflected>(object: &K) -> Option<u64> {
    object.resource_version()?.parse().ok()
}
