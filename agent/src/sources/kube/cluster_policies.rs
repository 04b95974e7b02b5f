//! The ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) watch.
//!
//! A custom resource is served only while its CRD is installed, so this watch first asks
//! whether the API serves the kind, and:
//! - not served (404): the kind has no objects. That counts as this watch's first list, so a
//!   cluster without the CRD syncs as ever; it asks again every discovery interval and starts
//!   watching when the CRD appears.
//! - served: list and watch like any other kind ([`reflect`]). When the CRD goes (404 on a
//!   list or watch), every policy it listed is removed from the model, and it waits for the
//!   CRD again.
//! - forbidden (403, RBAC without `clusternetworkpolicies`): the agent cannot know the
//!   policies, so the kind is reported as served with its objects unknown (as loud as
//!   discovery is about other vendors' kinds), and the model runs without them.
//!
//! While the CRD is served, the first state waits for its list: the first apply must not run
//! without an admin's Deny rules.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ClusterResourceScope;
use kube::{Api, Client, Resource};
use serde::Deserialize;

use super::reflect::{self, Reflected, Unwatchable};
use super::{ModelState, Shared};
use crate::model::cnp::ClusterNetworkPolicy;
use crate::model::Change;
use crate::sources::convert::{self, Rejection};
use crate::sources::unenforced::PolicyKind;

pub use crate::model::cnp::{GROUP, KIND, VERSION};
const PLURAL: &str = "clusternetworkpolicies";

/// A ClusterNetworkPolicy as served; its spec is checked by the model's parser, the same one
/// the manifests source uses, so both sources accept and refuse the same objects.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterNetworkPolicyObject {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<serde_json::Value>,
}

impl Resource for ClusterNetworkPolicyObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Reflected for ClusterNetworkPolicyObject {
    const WATCH: u32 = reflect::CLUSTER_POLICIES;
    const KIND: &'static str = KIND;
    const CUSTOM: bool = true;
    type Key = String;
    type Value = Arc<ClusterNetworkPolicy>;
    fn key(&self) -> Result<String, Rejection> {
        convert::name(&self.metadata)
    }
    fn convert(&self) -> Result<Option<Arc<ClusterNetworkPolicy>>, Rejection> {
        let name = convert::name(&self.metadata)?;
        let policy = ClusterNetworkPolicy::parse(&name, self.spec.as_ref())
            .map_err(|(field, message)| Rejection::new(field, message))?;
        Ok(Some(Arc::new(policy)))
    }
    fn change(key: String, value: Option<Arc<ClusterNetworkPolicy>>) -> Change {
        Change::ClusterPolicy(key, value)
    }
    fn keys(state: &mut ModelState) -> &mut BTreeSet<String> {
        &mut state.cluster_policies
    }
}

/// Why the agent cannot read ClusterNetworkPolicies although they are served (None: it
/// can, or the kind is not served).
pub type SharedForbidden = Arc<Mutex<Option<String>>>;

pub fn lock(forbidden: &SharedForbidden) -> MutexGuard<'_, Option<String>> {
    forbidden.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kind as `moat status` names it when it cannot be listed.
pub fn policy_kind() -> PolicyKind {
    PolicyKind { group: GROUP.into(), kind: KIND.into() }
}

/// Whether the API serves the kind: Some(true|false), or None when it cannot tell (the API
/// server unreachable or failing).
async fn served(client: &Client) -> Option<bool> {
    match client.list_api_group_resources(&format!("{GROUP}/{VERSION}")).await {
        Ok(list) => Some(list.resources.iter().any(|r| r.name == PLURAL)),
        Err(kube::Error::Api(status)) if status.code == 404 => Some(false),
        Err(error) => {
            tracing::debug!(%error, "asking whether ClusterNetworkPolicy is served failed; asking again");
            None
        }
    }
}

/// Runs until aborted: waits for the CRD, watches its objects while it is served.
pub async fn run(client: Client, shared: Arc<Shared>, forbidden: SharedForbidden, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = None;
    loop {
        tick.tick().await;
        let Some(served) = served(&client).await else { continue };
        if announced != Some(served) {
            announced = Some(served);
            tracing::info!(served, "ClusterNetworkPolicy ({GROUP}/{VERSION}) {}", if served { "served: watching it" } else { "not served (no CRD): none enforced, asking again" });
        }
        if !served {
            shared.sync.ok(reflect::CLUSTER_POLICIES);
            none_served(&shared, &forbidden);
            continue;
        }
        let api: Api<ClusterNetworkPolicyObject> = Api::all(client.clone());
        let unwatchable = reflect::run(api, None, Arc::clone(&shared)).await;
        // Not a failure of the API server: the kind is gone or not ours to read.
        shared.sync.ok(reflect::CLUSTER_POLICIES);
        match unwatchable {
            Unwatchable::NotServed => {
                none_served(&shared, &forbidden);
                announced = Some(false);
                tracing::warn!("ClusterNetworkPolicy no longer served (its CRD was removed): its policies are no longer enforced");
            }
            Unwatchable::Forbidden(why) => {
                if lock(&forbidden).replace(why.clone()).is_none() {
                    tracing::error!(%why, "ClusterNetworkPolicy is served but this agent may not list it (RBAC): cluster policies are NOT enforced; grant get/list/watch on clusternetworkpolicies");
                }
                // Never blocks the first state; what was listed before stays (fail-static,
                // as in an outage): the agent cannot tell which policies went.
                shared.listed_as_before::<ClusterNetworkPolicyObject>();
            }
        }
    }
}

/// No CRD, no objects: whatever an earlier watch listed is gone, and nothing is forbidden.
fn none_served(shared: &Shared, forbidden: &SharedForbidden) {
    *lock(forbidden) = None;
    shared.relisted::<ClusterNetworkPolicyObject>(BTreeSet::new(), Vec::new(), None);
}
