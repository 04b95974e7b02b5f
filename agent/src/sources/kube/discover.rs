//! Policy kinds the API server serves that moat does not enforce (ClusterNetworkPolicy at
//! versions other than v1alpha2, AdminNetworkPolicy, other vendors' CRDs), and their objects,
//! so none is ignored without a word.
//!
//! - API discovery (`/apis`) every interval: a CRD installed after the agent started is
//!   noticed on the next round, and a cluster without it is simply a cluster without it. Only
//!   new group versions have their resource lists read, plus all of them every
//!   [`FULL_EVERY`] rounds, so a steady cluster costs one request per round.
//! - The objects of each such kind are listed every round. The agent's RBAC allows this for
//!   `clusternetworkpolicies` only; a kind it may not list (403) is reported as served with
//!   its objects unknown, which is as loud as the agent can be about it. (The v1alpha2
//!   ClusterNetworkPolicy is watched and enforced: [`super::cluster_policies`].)
//! - A failing round keeps what the last one found: an outage never makes objects vanish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIResource};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};

use super::cluster_policies;
use crate::sources::unenforced::{self, PolicyKind, PolicyObject, Unenforced};

/// Every this many rounds, every group version's resources are read again (a CRD may add a
/// kind to a group version already known).
pub const FULL_EVERY: u32 = 10;
/// Objects per list page.
const PAGE: u32 = 500;

/// What the agent knows about unenforced policies; the discovery task writes it.
pub type SharedUnenforced = Arc<Mutex<Unenforced>>;

pub async fn run(client: Client, shared: SharedUnenforced, interval: Duration) {
    let mut discovery = Discovery::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = lock(&shared).clone();
        let found = discovery.round(&client, &before).await;
        *lock(&shared) = found;
    }
}

fn lock(shared: &SharedUnenforced) -> std::sync::MutexGuard<'_, Unenforced> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resource lists by group version, kept between rounds.
#[derive(Default)]
pub struct Discovery {
    resources: BTreeMap<String, Vec<APIResource>>,
    round: u32,
    /// The last round failed (logged once per outage, not per round).
    failing: bool,
}

impl Discovery {
    /// One round: what is served now, and its objects. `before` is kept for what cannot be
    /// read this time.
    pub async fn round(&mut self, client: &Client, before: &Unenforced) -> Unenforced {
        let groups = match client.list_api_groups().await {
            Ok(list) => list.groups,
            Err(error) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(%error, "API discovery failed; the unenforced policies last found stay reported");
                }
                return before.clone();
            }
        };
        self.failing = false;
        let full = self.round.is_multiple_of(FULL_EVERY);
        self.round = self.round.wrapping_add(1);
        self.refresh(client, &groups, full).await;
        let mut found = Unenforced::default();
        for (kind, resource) in self.targets(&groups) {
            match list(client, &resource).await {
                Ok(objects) => found.objects.extend(objects),
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    found.unlisted.insert(kind, format!("list forbidden: {}", status.message));
                }
                // Gone between discovery and list (its CRD was deleted): nothing to report.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::warn!(%kind, %error, "listing policy objects moat does not enforce failed; the last found stay reported");
                    found.objects.extend(before.objects.iter().filter(|o| o.kind == kind).cloned());
                    if let Some(why) = before.unlisted.get(&kind) {
                        found.unlisted.insert(kind, why.clone());
                    }
                }
            }
        }
        found
    }

    /// Reads the resource lists of group versions not known yet (all of them when `full`),
    /// and forgets those no longer served.
    async fn refresh(&mut self, client: &Client, groups: &[APIGroup], full: bool) {
        let served: BTreeSet<String> = groups.iter().flat_map(|g| g.versions.iter().map(|v| v.group_version.clone())).collect();
        self.resources.retain(|gv, _| served.contains(gv));
        for gv in served {
            if !full && self.resources.contains_key(&gv) {
                continue;
            }
            match client.list_api_group_resources(&gv).await {
                Ok(list) => {
                    self.resources.insert(gv, list.resources);
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.resources.remove(&gv);
                }
                Err(error) => tracing::debug!(group_version = %gv, %error, "reading a group version's resources failed; kept as last read"),
            }
        }
    }

    /// Each policy kind moat does not enforce, at the group's preferred version when it
    /// serves the kind there (the same objects are served at every version).
    fn targets(&self, groups: &[APIGroup]) -> BTreeMap<PolicyKind, ApiResource> {
        let mut targets = BTreeMap::new();
        for group in groups {
            let preferred = group.preferred_version.iter();
            for version in preferred.chain(group.versions.iter()) {
                for resource in self.resources.get(&version.group_version).into_iter().flatten() {
                    // Subresources (`x/status`) are not kinds of their own.
                    if resource.name.contains('/') {
                        continue;
                    }
                    let Some(kind) = unenforced::classify(&group.name, &resource.kind) else { continue };
                    if self.watched(group, &resource.kind) {
                        continue;
                    }
                    targets.entry(kind).or_insert_with(|| ApiResource {
                        group: group.name.clone(),
                        version: version.version.clone(),
                        api_version: version.group_version.clone(),
                        kind: resource.kind.clone(),
                        plural: resource.name.clone(),
                    });
                }
            }
        }
        targets
    }
}

impl Discovery {
    /// A kind the source watches and enforces: ClusterNetworkPolicy while its group serves it
    /// at the version moat reads (a CRD serves the same objects at each of its versions).
    fn watched(&self, group: &APIGroup, kind: &str) -> bool {
        let read = format!("{}/{}", cluster_policies::GROUP, cluster_policies::VERSION);
        group.name == cluster_policies::GROUP
            && kind == cluster_policies::KIND
            && self.resources.get(&read).is_some_and(|resources| resources.iter().any(|r| r.kind == kind))
    }
}

/// Every object of one kind, in pages.
async fn list(client: &Client, resource: &ApiResource) -> Result<Vec<PolicyObject>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let kind = PolicyKind { group: resource.group.clone(), kind: resource.kind.clone() };
    let mut params = ListParams::default().limit(PAGE);
    let mut objects = Vec::new();
    loop {
        let page = api.list(&params).await?;
        objects.extend(page.items.iter().map(|object| PolicyObject {
            kind: kind.clone(),
            version: resource.version.clone(),
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
        }));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}
