//! Raw documents → the model: typed decoding with field paths, and the checks on top of it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use serde::de::DeserializeOwned;

use super::read::{header, invalid, object_name};
use super::{Document, Loaded, ManifestError, NodeFound, Origin, MAX_OBJECTS};
use crate::model::Cluster;
use crate::sources::convert::{self, Rejection};
use crate::model::cnp::{self, ClusterNetworkPolicy};
use crate::sources::unenforced::{self, PolicyObject, Unenforced};

/// Skipped-count key for pods that have finished: their IPs may already belong to new pods.
const FINISHED_PODS: &str = "Pod (Succeeded/Failed)";

/// Builds the model from documents. Reads Namespace, Pod, Node, Service and networking.k8s.io/v1
/// NetworkPolicy objects; policy objects moat does not enforce are listed in
/// `Loaded::unenforced`; other kinds are counted and skipped (returned in `Loaded::skipped`
/// as kind -> count). Nodes are kept in `Loaded::nodes`; [`Loaded::for_node`] picks this
/// node's.
pub fn build_cluster(documents: &[Document]) -> Result<Loaded, ManifestError> {
    if let Some(extra) = documents.get(MAX_OBJECTS) {
        return Err(ManifestError::TooManyObjects {
            at: extra.origin.clone(),
            limit: MAX_OBJECTS,
        });
    }
    let mut builder = Builder::default();
    for document in documents {
        builder.add(document)?;
    }
    Ok(Loaded {
        cluster: builder.cluster,
        skipped: builder.skipped,
        nodes: builder.nodes,
        unenforced: builder.unenforced,
    })
}

#[derive(Default)]
struct Builder {
    cluster: Cluster,
    skipped: BTreeMap<String, usize>,
    nodes: BTreeMap<String, NodeFound>,
    unenforced: Unenforced,
    /// (kind, namespace, name) → where it was first defined. Namespaces use "" as namespace.
    seen: BTreeMap<(&'static str, String, String), Origin>,
}

/// What is being decoded, for error messages.
struct Context<'a> {
    origin: &'a Origin,
    object: Option<String>,
}

impl Context<'_> {
    fn error(&self, field: &str, message: String) -> ManifestError {
        invalid(self.origin.clone(), self.object.clone(), field, message)
    }
}

impl Builder {
    fn add(&mut self, document: &Document) -> Result<(), ManifestError> {
        let (kind, api_version) = header(&document.origin, &document.value)?;
        let cx = Context {
            origin: &document.origin,
            object: object_name(&document.value),
        };
        let group = unenforced::group_of(api_version);
        let supported = match kind {
            "Namespace" | "Pod" | "Node" | "Service" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            _ => return self.skip(kind, kind.to_string(), api_version, &document.value, &cx),
        };
        if api_version != supported {
            let ours = group.is_empty() || group == "networking.k8s.io" || group == "extensions";
            if ours {
                let message = format!("{api_version} is not supported (want {supported})");
                return Err(cx.error("apiVersion", message));
            }
            // Same kind name in another API group: another resource (a CRD).
            return self.skip(kind, format!("{kind} ({api_version})"), api_version, &document.value, &cx);
        }
        let reject = |rejection: Rejection| cx.error(&rejection.field, rejection.message);
        match kind {
            "Namespace" => {
                let namespace: core::Namespace = decode(&cx, &document.value)?;
                let namespace = convert::namespace(&namespace).map_err(reject)?;
                self.first_definition("Namespace", "", &namespace.name, &cx)?;
                self.cluster.namespaces.insert(namespace.name.clone(), namespace);
            }
            "Node" => {
                let node: core::Node = decode(&cx, &document.value)?;
                let (name, node) = convert::node(&node).map_err(reject)?;
                self.first_definition("Node", "", &name, &cx)?;
                self.nodes.insert(name.clone(), NodeFound { labels: node.labels.clone(), origin: document.origin.clone() });
                self.cluster.nodes.insert(name, node);
            }
            "Pod" => {
                let pod: core::Pod = decode(&cx, &document.value)?;
                let key = convert::namespaced_key(&pod.metadata).map_err(reject)?;
                self.first_definition("Pod", &key.namespace, &key.name, &cx)?;
                let finished = convert::pod_finished(&pod);
                // Converted even when finished: bad input is an error wherever it is.
                let pod = convert::pod(&pod).map_err(reject)?;
                if finished {
                    *self.skipped.entry(FINISHED_PODS.to_string()).or_default() += 1;
                } else {
                    self.cluster.pods.insert(pod.key.clone(), pod);
                }
            }
            "Service" => {
                let service: core::Service = decode(&cx, &document.value)?;
                let service = convert::service(&service).map_err(reject)?;
                self.first_definition("Service", &service.key.namespace, &service.key.name, &cx)?;
                self.cluster.services.insert(service.key.clone(), service);
            }
            _ => {
                let policy: networking::NetworkPolicy = decode(&cx, &document.value)?;
                let (key, policy) = convert::network_policy(&policy).map_err(reject)?;
                self.first_definition("NetworkPolicy", &key.namespace, &key.name, &cx)?;
                self.cluster.network_policies.insert(key, Arc::new(policy));
            }
        }
        Ok(())
    }

    /// An object moat does not read: a policy it does not enforce is listed (never silently
    /// dropped), anything else counted under `counted_as`.
    fn skip(&mut self, kind: &str, counted_as: String, api_version: &str, value: &serde_json::Value, cx: &Context<'_>) -> Result<(), ManifestError> {
        let Some(policy_kind) = unenforced::classify(unenforced::group_of(api_version), kind) else {
            *self.skipped.entry(counted_as).or_default() += 1;
            return Ok(());
        };
        let text = |key: &str| value.get("metadata").and_then(|m| m.get(key)).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let name = text("name");
        if name.is_empty() {
            return Err(cx.error("metadata.name", "missing (a policy object moat does not enforce is still reported by name)".into()));
        }
        let version = api_version.rsplit('/').next().unwrap_or(api_version).to_string();
        if api_version.split_once('/') == Some((cnp::GROUP, cnp::VERSION)) && kind == cnp::KIND {
            let policy = ClusterNetworkPolicy::parse(&name, value.get("spec")).map_err(|(field, message)| cx.error(&field, message))?;
            self.first_definition("ClusterNetworkPolicy", "", &name, cx)?;
            self.cluster.cluster_network_policies.insert(name, std::sync::Arc::new(policy));
            return Ok(());
        }
        self.unenforced.objects.insert(PolicyObject { kind: policy_kind, version, namespace: text("namespace"), name });
        Ok(())
    }

    fn first_definition(
        &mut self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        cx: &Context<'_>,
    ) -> Result<(), ManifestError> {
        match self
            .seen
            .entry((kind, namespace.to_string(), name.to_string()))
        {
            Entry::Vacant(entry) => {
                entry.insert(cx.origin.clone());
                Ok(())
            }
            Entry::Occupied(entry) => Err(ManifestError::Duplicate {
                kind: kind.into(),
                key: if namespace.is_empty() {
                    name.into()
                } else {
                    format!("{namespace}/{name}")
                },
                first: Box::new(entry.get().clone()),
                second: Box::new(cx.origin.clone()),
            }),
        }
    }
}

/// Typed decoding that keeps the path of the field that failed.
fn decode<T: DeserializeOwned>(
    cx: &Context<'_>,
    value: &serde_json::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        cx.error(&field, error.into_inner().to_string())
    })
}
