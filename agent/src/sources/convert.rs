//! Typed Kubernetes objects → model objects. Shared by every source (manifest files, the API
//! server), so an object is accepted or refused, with the same message, wherever it came
//! from. The caller adds where the object came from (file and document, or the API server).

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::limits;
use super::policy_checks::validate as validate_policy;
use crate::model::{policy::Policy, ContainerPort, Labels, Namespace, Node, ObjectKey, Pod, Protocol, Service};

/// Why one object is refused: the field (a path into the object; empty for the whole) and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// `Kind namespace/name` (or less, as far as known), as errors name objects.
pub fn describe_object(kind: &str, metadata: &ObjectMeta) -> String {
    let text = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
    match (text(&metadata.namespace), text(&metadata.name)) {
        (Some(namespace), Some(name)) => format!("{kind} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_string(),
    }
}

fn labels_of(metadata: &ObjectMeta) -> Labels {
    metadata.labels.as_ref().map(Labels::from).unwrap_or_default()
}

/// A Namespace: its name and labels.
pub fn namespace(namespace: &core::Namespace) -> Result<Namespace, Rejection> {
    let name = name(&namespace.metadata)?;
    limits::labels(namespace.metadata.labels.as_ref(), "metadata.labels").map_err(reject)?;
    let labels = labels_of(&namespace.metadata);
    Ok(Namespace { name, labels })
}

/// A Node: its name, labels (they select node profiles and `nodes` peers) and IP addresses
/// (InternalIP and ExternalIP; host names are not addresses).
pub fn node(node: &core::Node) -> Result<(String, Node), Rejection> {
    let name = name(&node.metadata)?;
    limits::labels(node.metadata.labels.as_ref(), "metadata.labels").map_err(reject)?;
    let listed = node.status.as_ref().and_then(|status| status.addresses.as_ref());
    let mut addresses = Vec::new();
    for (index, address) in listed.into_iter().flatten().enumerate() {
        if !matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        let field = format!("status.addresses[{index}].address");
        if addresses.len() == limits::MAX_NODE_ADDRESSES {
            return Err(Rejection::new(field, format!("more than {} IP addresses", limits::MAX_NODE_ADDRESSES)));
        }
        let ip = address.address.parse::<IpAddr>().map_err(|_| Rejection::new(field, format!("{:?} is not an IP address", address.address)))?;
        let ip = ip.to_canonical();
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    Ok((name, Node { labels: labels_of(&node.metadata), addresses }))
}

/// Whether a pod has finished: its IPs may already belong to new pods, so it is not in the
/// model (it is still converted: bad input is an error wherever it is).
pub fn pod_finished(pod: &core::Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A Pod: key, uid, labels, addresses, node and ports.
pub fn pod(pod: &core::Pod) -> Result<Pod, Rejection> {
    let key = namespaced_key(&pod.metadata)?;
    limits::labels(pod.metadata.labels.as_ref(), "metadata.labels").map_err(reject)?;
    let default_spec = core::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let default_status = core::PodStatus::default();
    let status = pod.status.as_ref().unwrap_or(&default_status);

    let mut ips = Vec::new();
    for (index, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
        let ip = parse_pod_ip(&pod_ip.ip).map_err(|m| Rejection::new(format!("status.podIPs[{index}].ip"), m))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    // podIP is podIPs[0] on every current cluster; it is checked even then, and used alone
    // only when podIPs is missing (older clusters, hand-written manifests).
    if let Some(text) = status.pod_ip.as_deref().filter(|text| !text.is_empty()) {
        let ip = parse_pod_ip(text).map_err(|message| Rejection::new("status.podIP", message))?;
        if ips.is_empty() {
            ips.push(ip);
        }
    }

    let mut ports = Vec::new();
    for (index, container) in spec.containers.iter().enumerate() {
        ports.extend(container_ports(&format!("spec.containers[{index}].ports"), container)?);
    }
    for (index, container) in spec.init_containers.iter().flatten().enumerate() {
        let container_ports = container_ports(&format!("spec.initContainers[{index}].ports"), container)?;
        // Only sidecars (restartPolicy Always) keep running and serve their ports.
        if container.restart_policy.as_deref() == Some("Always") {
            ports.extend(container_ports);
        }
    }

    // Kept for the pod's lifetime: no room for pushes that will not come.
    ips.shrink_to_fit();
    Ok(Pod {
        key,
        uid: pod.metadata.uid.clone().filter(|uid| !uid.is_empty()),
        labels: labels_of(&pod.metadata),
        ips,
        node_name: spec.node_name.as_deref().filter(|name| !name.is_empty()).map(crate::model::labels::intern),
        host_network: spec.host_network.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        ports: crate::model::shared_ports(ports),
    })
}

/// A Service: its key and ClusterIPs (`None`, headless, and ExternalName Services have
/// none), checked as the API server checks them: at most one address per family,
/// `clusterIP` equal to `clusterIPs[0]` when both are given.
pub fn service(service: &core::Service) -> Result<Service, Rejection> {
    let key = namespaced_key(&service.metadata)?;
    let default_spec = core::ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let given = |text: &Option<String>| text.as_deref().filter(|text| !text.is_empty()).map(str::to_string);
    let listed: Vec<String> = spec.cluster_ips.iter().flatten().cloned().collect();
    if let (Some(single), Some(first)) = (given(&spec.cluster_ip), listed.first()) {
        if single != *first {
            return Err(Rejection::new("spec.clusterIP", format!("{single:?} is not spec.clusterIPs[0] ({first:?})")));
        }
    }
    let (field, texts) = match given(&spec.cluster_ip) {
        Some(single) if listed.is_empty() => ("spec.clusterIP".to_string(), vec![single]),
        _ => ("spec.clusterIPs".to_string(), listed),
    };
    if texts.len() > 2 {
        return Err(Rejection::new(field, format!("{} addresses (at most one per family)", texts.len())));
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let at = if field == "spec.clusterIP" { field.clone() } else { format!("{field}[{index}]") };
        if text == "None" {
            if texts.len() > 1 {
                return Err(Rejection::new(at, "\"None\" (headless) must be the only entry"));
            }
            continue;
        }
        let ip = parse_pod_ip(text).map_err(|message| Rejection::new(at.clone(), message.replace("pod address", "Service address")))?;
        if cluster_ips.iter().any(|other| other.is_ipv4() == ip.is_ipv4()) {
            return Err(Rejection::new(at, format!("{text:?}: a second address of the same family")));
        }
        cluster_ips.push(ip);
    }
    if spec.type_.as_deref() == Some("ExternalName") {
        // An ExternalName Service is a CNAME: it has no address of its own.
        cluster_ips.clear();
    }
    Ok(Service { key, cluster_ips })
}

/// A networking.k8s.io/v1 NetworkPolicy, checked as the API server checks it, in the
/// normalized form the model keeps (the API object itself is not kept: it would be a second
/// copy of every policy).
pub fn network_policy(policy: &networking::NetworkPolicy) -> Result<(ObjectKey, Policy), Rejection> {
    limits::network_policy(policy).map_err(reject)?;
    validate_policy(policy).map_err(|(field, message)| Rejection::new(field, message))?;
    let key = namespaced_key(&policy.metadata)?;
    let normalized = Policy::from_api(&key, policy).map_err(|error| Rejection::new(error.field, error.message))?;
    Ok((key, normalized))
}

fn reject((field, message): limits::Exceeded) -> Rejection {
    Rejection::new(field, message)
}

pub fn name(metadata: &ObjectMeta) -> Result<String, Rejection> {
    match metadata.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(Rejection::new("metadata.name", "missing")),
    }
}

/// An absent namespace is `default`, as `kubectl apply` takes it.
pub fn namespaced_key(metadata: &ObjectMeta) -> Result<ObjectKey, Rejection> {
    let namespace = metadata.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or("default");
    // The namespace is shared by every object in it: one copy, not one per pod.
    Ok(ObjectKey { namespace: crate::model::labels::intern(namespace), name: name(metadata)?.into() })
}

fn container_ports(field: &str, container: &core::Container) -> Result<Vec<ContainerPort>, Rejection> {
    let mut ports = Vec::new();
    for (index, port) in container.ports.iter().flatten().enumerate() {
        let number = u16::try_from(port.container_port).ok().filter(|port| *port != 0).ok_or_else(|| {
            let message = format!("{} is outside 1..=65535", port.container_port);
            Rejection::new(format!("{field}[{index}].containerPort"), message)
        })?;
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::parse(text).ok_or_else(|| {
                let message = format!("unknown protocol {text:?} (want TCP, UDP or SCTP)");
                Rejection::new(format!("{field}[{index}].protocol"), message)
            })?,
        };
        let name = port.name.clone().filter(|name| !name.is_empty());
        ports.push(ContainerPort { name, port: number, protocol });
    }
    Ok(ports)
}

/// A pod address. IPv4-mapped IPv6 is taken as the IPv4 address, the form the kernel uses
/// for IPv4 traffic; addresses no pod can have are refused rather than attributed to a pod.
fn parse_pod_ip(text: &str) -> Result<IpAddr, String> {
    let ip = text.parse::<IpAddr>().map_err(|_| format!("{text:?} is not an IP address"))?.to_canonical();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!("{text:?} is not a usable pod address"));
    }
    Ok(ip)
}
