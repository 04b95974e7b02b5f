//! One list/watch loop per resource, reflected into the model as [`Change`]s.
//!
//! - List once, in pages (`limit`/`continue`), then watch from the list's resourceVersion
//!   with bookmarks; a watch the server ends (its timeout, a restart) is resumed at once from
//!   the last version seen — an object's or a bookmark's — so a reconnect costs no re-list.
//! - `410 Gone` (the version was compacted away) re-lists at once: it means "your version is
//!   too old", not "the server is failing". The re-list is handed over as changes against what
//!   was listed before, so the enforced state never goes through an empty or partial model.
//! - Failures (connection refused, 5xx, a broken stream) retry with jittered exponential
//!   backoff from the last version seen, so thousands of agents reconnecting after an outage
//!   spread out and resume instead of re-listing.
//! - Health follows the watch itself: a successful list, a (re)connected watch and a bookmark
//!   mark it healthy, as much as an object event does.

use std::collections::BTreeSet;
use std::fmt::{Debug, Display};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{ModelState, Shared};
use crate::model::{self, policy::Policy, Change, ObjectKey};
use crate::sources::convert::{self, Rejection};

/// Watch numbers, for [`crate::sources::sync::SyncState`] and the InitDone mask.
pub const NAMESPACES: u32 = 0;
pub const PODS: u32 = 1;
pub const NETWORK_POLICIES: u32 = 2;
pub const NODES: u32 = 3;
pub const SERVICES: u32 = 4;
pub const CLUSTER_POLICIES: u32 = 5;

/// Objects per list page.
const PAGE: u32 = 500;
/// Server-side watch timeout; the watch is resumed when it ends.
const WATCH_TIMEOUT_SECONDS: u32 = 290;
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// An API resource moat reflects into the model.
pub trait Reflected:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const WATCH: u32;
    const KIND: &'static str;
    /// A custom resource: served only while its CRD is installed, so a 404 or 403 ends
    /// [`run`] (the caller decides) instead of being retried as a failure.
    const CUSTOM: bool = false;
    type Key: Ord + Clone + Display + Send;
    type Value: Clone + PartialEq + Send;
    fn key(&self) -> Result<Self::Key, Rejection>;
    /// None: valid, but not part of the model (a finished pod).
    fn convert(&self) -> Result<Option<Self::Value>, Rejection>;
    fn change(key: Self::Key, value: Option<Self::Value>) -> Change;
    /// The keys of this kind in the model.
    fn keys(state: &mut ModelState) -> &mut BTreeSet<Self::Key>;
}

impl Reflected for core::Namespace {
    const WATCH: u32 = NAMESPACES;
    const KIND: &'static str = "Namespace";
    type Key = String;
    type Value = model::Namespace;
    fn key(&self) -> Result<String, Rejection> {
        convert::name(&self.metadata)
    }
    fn convert(&self) -> Result<Option<model::Namespace>, Rejection> {
        convert::namespace(self).map(Some)
    }
    fn change(key: String, value: Option<model::Namespace>) -> Change {
        Change::Namespace(key, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<String> {
        &mut state.namespaces
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
    fn convert(&self) -> Result<Option<model::Pod>, Rejection> {
        let pod = convert::pod(self)?;
        Ok((!convert::pod_finished(self)).then_some(pod))
    }
    fn change(key: ObjectKey, value: Option<model::Pod>) -> Change {
        Change::Pod(key, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<ObjectKey> {
        &mut state.pods
    }
}

impl Reflected for networking::NetworkPolicy {
    const WATCH: u32 = NETWORK_POLICIES;
    const KIND: &'static str = "NetworkPolicy";
    type Key = ObjectKey;
    type Value = Arc<Policy>;
    fn key(&self) -> Result<ObjectKey, Rejection> {
        convert::namespaced_key(&self.metadata)
    }
    fn convert(&self) -> Result<Option<Arc<Policy>>, Rejection> {
        let (_, policy) = convert::network_policy(self)?;
        Ok(Some(Arc::new(policy)))
    }
    fn change(key: ObjectKey, value: Option<Arc<Policy>>) -> Change {
        Change::Policy(key, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<ObjectKey> {
        &mut state.policies
    }
}

impl Reflected for core::Node {
    const WATCH: u32 = NODES;
    const KIND: &'static str = "Node";
    type Key = String;
    type Value = model::Node;
    fn key(&self) -> Result<String, Rejection> {
        convert::name(&self.metadata)
    }
    fn convert(&self) -> Result<Option<model::Node>, Rejection> {
        convert::node(self).map(|(_, node)| Some(node))
    }
    fn change(name: String, value: Option<model::Node>) -> Change {
        Change::Node(name, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<String> {
        &mut state.nodes
    }
}

impl Reflected for core::Service {
    const WATCH: u32 = SERVICES;
    const KIND: &'static str = "Service";
    type Key = ObjectKey;
    type Value = model::Service;
    fn key(&self) -> Result<ObjectKey, Rejection> {
        convert::namespaced_key(&self.metadata)
    }
    fn convert(&self) -> Result<Option<model::Service>, Rejection> {
        convert::service(self).map(Some)
    }
    fn change(key: ObjectKey, value: Option<model::Service>) -> Change {
        Change::Service(key, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<ObjectKey> {
        &mut state.services
    }
}

/// How one watch ended.
enum Ended {
    /// The server closed it: resume from this version at once.
    Resume(String),
    /// 410 Gone: re-list at once.
    Expired,
    /// A failure: retry from this version after a backoff.
    Failed(String, kube::Error),
}

/// Why the list/watch of a custom resource ([`Reflected::CUSTOM`]) stopped.
#[derive(Debug)]
pub enum Unwatchable {
    /// 404: the kind is not served (its CRD is not installed, or was removed).
    NotServed,
    /// 403: served, but this agent may not list or watch it.
    Forbidden(String),
}

/// Runs the list/watch of `K` until the task is aborted — or, for a custom resource, until
/// the kind is not served or not readable. `fields`: a field selector (this node's name for
/// the Node watch).
pub async fn run<K: Reflected>(api: Api<K>, fields: Option<String>, shared: Arc<Shared>) -> Unwatchable {
    let mut backoff = Backoff::new();
    let mut resume: Option<String> = None;
    loop {
        let version = match resume.take() {
            Some(version) => version,
            None => match list(&api, fields.as_deref(), &shared).await {
                Ok(version) => version,
                Err(error) => {
                    if let Some(unwatchable) = unwatchable::<K>(&error) {
                        return unwatchable;
                    }
                    failed::<K>(&shared, &error.to_string());
                    backoff.wait().await;
                    continue;
                }
            },
        };
        match watch(&api, fields.as_deref(), version, &shared, &mut backoff).await {
            Ended::Resume(version) => resume = Some(version),
            Ended::Expired => tracing::info!(
                kind = K::KIND,
                "watch version expired (410 Gone); re-listing now"
            ),
            Ended::Failed(version, error) => {
                if let Some(unwatchable) = unwatchable::<K>(&error) {
                    return unwatchable;
                }
                failed::<K>(&shared, &error.to_string());
                backoff.wait().await;
                resume = Some(version);
            }
        }
    }
}

/// A custom resource's 404 or 403, which end [`run`]; every other error is retried.
fn unwatchable<K: Reflected>(error: &kube::Error) -> Option<Unwatchable> {
    match error {
        kube::Error::Api(status) if K::CUSTOM && status.code == 404 => Some(Unwatchable::NotServed),
        kube::Error::Api(status) if K::CUSTOM && status.code == 403 => Some(Unwatchable::Forbidden(status.message.clone())),
        _ => None,
    }
}

fn failed<K: Reflected>(shared: &Shared, error: &str) {
    shared.sync.failed(K::WATCH);
    tracing::warn!(kind = K::KIND, %error, "watch failed; retrying with backoff, the last synced state stays enforced");
}

/// Lists every object in pages and hands the result over as changes; returns the list's
/// resourceVersion. The next page is requested before this one is converted, so the API
/// server produces it while the agent works.
async fn list<K: Reflected>(
    api: &Api<K>,
    fields: Option<&str>,
    shared: &Shared,
) -> Result<String, kube::Error> {
    let mut params = ListParams::default().limit(PAGE);
    params.field_selector = fields.map(str::to_string);
    // Collected, then built at once: inserted in the server's (key) order, a B-tree keeps its
    // leaves half full — 4.8 MB for the keys of 100k pods.
    let mut listed = Vec::new();
    let mut changes = Vec::new();
    let mut page = api.list(&params).await?;
    let version = loop {
        let next = page.metadata.continue_.take().filter(|token| !token.is_empty()).map(|token| {
            params.continue_token = Some(token);
            let (api, params) = (api.clone(), params.clone());
            tokio::spawn(async move { api.list(&params).await })
        });
        for object in std::mem::take(&mut page.items) {
            let Ok(key) = checked(object.key(), &object) else {
                continue;
            };
            // A refused object keeps its last good version: listed, but no change.
            listed.push(key.clone());
            if let Ok(value) = checked(object.convert(), &object) {
                changes.push(K::change(key, value));
            }
        }
        match next {
            Some(request) => page = request.await.map_err(|failed| kube::Error::Service(Box::new(failed)))??,
            None => break page.metadata.resource_version.unwrap_or_default(),
        }
    };
    let listed: BTreeSet<K::Key> = listed.into_iter().collect();
    let count = listed.len();
    // Counted before the hand-over wakes anyone waiting for the first complete state.
    shared.sync.ok(K::WATCH);
    shared.sync.listed();
    shared.relisted::<K>(listed, changes, numeric(&version));
    tracing::info!(kind = K::KIND, objects = count, "listed");
    Ok(version)
}

async fn watch<K: Reflected>(
    api: &Api<K>,
    fields: Option<&str>,
    mut version: String,
    shared: &Shared,
    backoff: &mut Backoff,
) -> Ended {
    // Bookmarks are on by default: they carry the version to resume from.
    let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECONDS);
    params.field_selector = fields.map(str::to_string);
    let stream = match api.watch(&params, &version).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(status)) if status.code == 410 => return Ended::Expired,
        Err(error) => return Ended::Failed(version, error),
    };
    // Connected: the watch is healthy again, whether or not anything changes.
    shared.sync.ok(K::WATCH);
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => return Ended::Failed(version, error),
        };
        backoff.reset();
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                version = object.resource_version().unwrap_or(version);
                let Ok(key) = checked(object.key(), &object) else {
                    continue;
                };
                if let Ok(value) = checked(object.convert(), &object) {
                    shared.changed::<K>(key, value, numeric(&version));
                }
            }
            WatchEvent::Deleted(object) => {
                version = object.resource_version().unwrap_or(version);
                let Ok(key) = checked(object.key(), &object) else {
                    continue;
                };
                shared.changed::<K>(key, None, numeric(&version));
            }
            WatchEvent::Bookmark(bookmark) => {
                version = bookmark.metadata.resource_version;
                shared.sync.ok(K::WATCH);
            }
            WatchEvent::Error(status) if status.code == 410 => return Ended::Expired,
            WatchEvent::Error(status) => return Ended::Failed(version, kube::Error::Api(status)),
        }
    }
    Ended::Resume(version)
}

/// Exponential backoff with jitter: each wait is drawn from [d/2, d], d doubling from
/// [`BACKOFF_FIRST`] to [`BACKOFF_MAX`]; reset once the watch delivers again.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    async fn wait(&mut self) {
        let full = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jittered = full / 2 + full.mul_f64(fastrand::f64() / 2.0);
        tokio::time::sleep(jittered).await;
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

fn numeric(version: &str) -> Option<u64> {
    version.parse().ok()
}
