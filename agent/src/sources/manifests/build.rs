//! Raw documents → the model: typed decoding with field paths, and the checks on top of it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use super::policy;
use super::read::{header, invalid, object_name};
use super::{Document, Loaded, ManifestError, Origin, MAX_OBJECTS};
use crate::model::{Cluster, ContainerPort, Namespace, ObjectKey, Pod, Protocol};

/// Skipped-count key for pods that have finished: their IPs may already belong to new pods.
const FINISHED_PODS: &str = "Pod (Succeeded/Failed)";

/// Builds the model from documents. Reads Namespace, Pod and networking.k8s.io/v1
/// NetworkPolicy objects; other kinds are counted and skipped (returned in `Loaded::skipped`
/// as kind -> count).
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
    })
}

#[derive(Default)]
struct Builder {
    cluster: Cluster,
    skipped: BTreeMap<String, usize>,
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
        let supported = match kind {
            "Namespace" | "Pod" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            _ => {
                *self.skipped.entry(kind.to_string()).or_default() += 1;
                return Ok(());
            }
        };
        if api_version != supported {
            let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
            let ours = group.is_empty() || group == "networking.k8s.io" || group == "extensions";
            if ours {
                let message = format!("{api_version} is not supported (want {supported})");
                return Err(cx.error("apiVersion", message));
            }
            // Same kind name in another API group: another resource (a CRD).
            *self
                .skipped
                .entry(format!("{kind} ({api_version})"))
                .or_default() += 1;
            return Ok(());
        }
        match kind {
            "Namespace" => {
                let namespace: core::Namespace = decode(&cx, &document.value)?;
                let name = name(&cx, &namespace.metadata)?;
                self.first_definition("Namespace", "", &name, &cx)?;
                let labels = namespace.metadata.labels.unwrap_or_default();
                self.cluster
                    .namespaces
                    .insert(name.clone(), Namespace { name, labels });
            }
            "Pod" => {
                let pod: core::Pod = decode(&cx, &document.value)?;
                let key = namespaced_key(&cx, &pod.metadata)?;
                self.first_definition("Pod", &key.namespace, &key.name, &cx)?;
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref());
                let finished = matches!(phase, Some("Succeeded" | "Failed"));
                // Converted even when finished: bad input is an error wherever it is.
                let pod = convert_pod(&cx, key, pod)?;
                if finished {
                    *self.skipped.entry(FINISHED_PODS.to_string()).or_default() += 1;
                } else {
                    self.cluster.pods.insert(pod.key.clone(), pod);
                }
            }
            _ => {
                let policy: networking::NetworkPolicy = decode(&cx, &document.value)?;
                policy::validate(&policy).map_err(|(field, message)| cx.error(&field, message))?;
                let key = namespaced_key(&cx, &policy.metadata)?;
                self.first_definition("NetworkPolicy", &key.namespace, &key.name, &cx)?;
                self.cluster.network_policies.insert(key, policy);
            }
        }
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

fn name(cx: &Context<'_>, metadata: &ObjectMeta) -> Result<String, ManifestError> {
    match metadata.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(cx.error("metadata.name", "missing".into())),
    }
}

/// An absent namespace is `default`, as `kubectl apply` takes it.
fn namespaced_key(cx: &Context<'_>, metadata: &ObjectMeta) -> Result<ObjectKey, ManifestError> {
    let namespace = metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default");
    Ok(ObjectKey::new(namespace, name(cx, metadata)?))
}

fn convert_pod(cx: &Context<'_>, key: ObjectKey, pod: core::Pod) -> Result<Pod, ManifestError> {
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();

    let mut ips = Vec::new();
    for (index, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
        let ip = parse_pod_ip(&pod_ip.ip)
            .map_err(|m| cx.error(&format!("status.podIPs[{index}].ip"), m))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    // podIP is podIPs[0] on every current cluster; it is checked even then, and used alone
    // only when podIPs is missing (older clusters, hand-written manifests).
    if let Some(text) = status.pod_ip.as_deref().filter(|text| !text.is_empty()) {
        let ip = parse_pod_ip(text).map_err(|message| cx.error("status.podIP", message))?;
        if ips.is_empty() {
            ips.push(ip);
        }
    }

    let mut ports = Vec::new();
    for (index, container) in spec.containers.iter().enumerate() {
        let field = format!("spec.containers[{index}].ports");
        ports.extend(container_ports(cx, &field, container)?);
    }
    for (index, container) in spec.init_containers.iter().flatten().enumerate() {
        let field = format!("spec.initContainers[{index}].ports");
        let container_ports = container_ports(cx, &field, container)?;
        // Only sidecars (restartPolicy Always) keep running and serve their ports.
        if container.restart_policy.as_deref() == Some("Always") {
            ports.extend(container_ports);
        }
    }

    Ok(Pod {
        key,
        uid: pod.metadata.uid.filter(|uid| !uid.is_empty()),
        labels: pod.metadata.labels.unwrap_or_default(),
        ips,
        node_name: spec.node_name.filter(|name| !name.is_empty()),
        host_network: spec.host_network.unwrap_or(false),
        ports,
    })
}

fn container_ports(
    cx: &Context<'_>,
    field: &str,
    container: &core::Container,
) -> Result<Vec<ContainerPort>, ManifestError> {
    let mut ports = Vec::new();
    for (index, port) in container.ports.iter().flatten().enumerate() {
        let number = u16::try_from(port.container_port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                let message = format!("{} is outside 1..=65535", port.container_port);
                cx.error(&format!("{field}[{index}].containerPort"), message)
            })?;
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::parse(text).ok_or_else(|| {
                let message = format!("unknown protocol {text:?} (want TCP, UDP or SCTP)");
                cx.error(&format!("{field}[{index}].protocol"), message)
            })?,
        };
        let name = port.name.clone().filter(|name| !name.is_empty());
        ports.push(ContainerPort {
            name,
            port: number,
            protocol,
        });
    }
    Ok(ports)
}

/// A pod address. IPv4-mapped IPv6 is taken as the IPv4 address, the form the kernel uses
/// for IPv4 traffic; addresses no pod can have are refused rather than attributed to a pod.
fn parse_pod_ip(text: &str) -> Result<IpAddr, String> {
    let ip = text
        .parse::<IpAddr>()
        .map_err(|_| format!("{text:?} is not an IP address"))?
        .to_canonical();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!("{text:?} is not a usable pod address"));
    }
    Ok(ip)
}
