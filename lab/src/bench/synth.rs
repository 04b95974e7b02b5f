//! A synthetic cluster for the benchmarks: tenants of five namespaces each, pods with the
//! label shapes of real deployments (a handful of apps per namespace, replicas sharing
//! labels), cluster DNS, and NetworkPolicies of six common shapes. Deterministic: the same
//! sizes always give the same cluster.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use moat_agent::model::{Cluster, ContainerPort, Labels, Namespace, ObjectKey, Pod, PodKey, Protocol};

/// Apps of every namespace; pod `j` of a namespace runs `APPS[j % APPS.len()]`.
pub const APPS: [&str; 10] = ["web", "api", "worker", "cache", "db", "auth", "search", "queue", "batch", "metrics"];
/// Policy shapes, in the order they are handed out (see [`policy`]).
pub const SHAPES: usize = 6;
const NAMESPACES_PER_TENANT: usize = 5;
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

#[derive(Debug, thiserror::Error)]
#[error("synthetic NetworkPolicy {index}: {message}")]
pub struct SynthError {
    index: usize,
    message: String,
}

/// Sizes of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub pods: usize,
    pub pods_per_namespace: usize,
    pub policies: usize,
}

impl Shape {
    pub fn namespaces(&self) -> usize {
        self.pods.div_ceil(self.pods_per_namespace.max(1)).max(1)
    }
}

pub fn namespace_name(index: usize) -> String {
    format!("ns-{index}")
}

pub fn pod_key(namespace: usize, pod: usize) -> PodKey {
    PodKey::new(namespace_name(namespace), format!("pod-{pod}"))
}

/// Builds the cluster: `shape.pods` workload pods plus two cluster-DNS pods in kube-system.
pub fn cluster(shape: Shape) -> Result<Cluster, SynthError> {
    let mut cluster = Cluster::default();
    let namespaces = shape.namespaces();
    for index in 0..namespaces {
        let labels: Labels = [
            ("tenant".to_string(), format!("t{}", index / NAMESPACES_PER_TENANT)),
            ("env".to_string(), ENVS[index % ENVS.len()].to_string()),
            ("team".to_string(), format!("team-{}", index % 7)),
        ]
        .into();
        let name = namespace_name(index);
        cluster.namespaces.insert(name.clone(), Namespace { name, labels });
    }
    cluster.namespaces.insert(
        "kube-system".into(),
        Namespace { name: "kube-system".into(), labels: [("tenant".to_string(), "platform".to_string())].into() },
    );
    let mut next_ip: u32 = u32::from(Ipv4Addr::new(10, 0, 0, 1));
    let mut add = |cluster: &mut Cluster, key: PodKey, labels: Labels, ports: Vec<ContainerPort>| {
        let pod = Pod {
            key: key.clone(),
            uid: None,
            labels,
            ips: vec![IpAddr::V4(Ipv4Addr::from(next_ip))],
            node_name: None,
            host_network: false,
            host_pid: false,
            ports: ports.into(),
        };
        next_ip += 1;
        cluster.pods.insert(key, pod);
    };
    for index in 0..2 {
        let key = PodKey::new("kube-system", format!("coredns-{index}"));
        let ports = vec![port(Some("dns"), 53, Protocol::Udp), port(Some("dns-tcp"), 53, Protocol::Tcp)];
        add(&mut cluster, key, [("k8s-app".to_string(), "kube-dns".to_string())].into(), ports);
    }
    for pod in 0..shape.pods {
        let namespace = pod / shape.pods_per_namespace.max(1);
        let local = pod % shape.pods_per_namespace.max(1);
        let app = APPS[local % APPS.len()];
        let tier = if local.is_multiple_of(2) { "frontend" } else { "backend" };
        let labels: Labels = [("app".to_string(), app.to_string()), ("tier".to_string(), tier.to_string())].into();
        let mut ports = vec![port(Some("http"), 8080, Protocol::Tcp), port(Some("metrics"), 9090, Protocol::Tcp)];
        if app == "db" {
            ports.push(port(Some("postgres"), 5432, Protocol::Tcp));
        }
        add(&mut cluster, pod_key(namespace, local), labels, ports);
    }
    for index in 0..shape.policies {
        let namespace = (index / SHAPES) % namespaces;
        let key = ObjectKey::new(namespace_name(namespace), format!("np-{index}"));
        let value = policy(index, namespace);
        let policy: NetworkPolicy = serde_json::from_value(value).map_err(|e| SynthError { index, message: e.to_string() })?;
        let (_, policy) = moat_agent::sources::convert::network_policy(&policy).map_err(|e| SynthError { index, message: e.to_string() })?;
        cluster.network_policies.insert(key, Arc::new(policy));
    }
    Ok(cluster)
}

fn port(name: Option<&str>, number: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort { name: name.map(String::from), port: number, protocol }
}

/// Policy `index` in namespace `namespace`. Policies come in groups of [`SHAPES`]; every
/// shape of a group selects the same app (`APPS[group % 10]`), so that app's pods are
/// isolated both ways and allowed a realistic mix of peers.
pub fn policy(index: usize, namespace: usize) -> Value {
    let group = index / SHAPES;
    let app = APPS[group % APPS.len()];
    let peer_app = APPS[(group + 1) % APPS.len()];
    let other_app = APPS[(group + 2) % APPS.len()];
    let tenant = format!("t{}", namespace / NAMESPACES_PER_TENANT);
    let spec = match index % SHAPES {
        // Default deny of ingress for the whole namespace.
        0 => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        // Same-namespace app-to-app on a numbered port.
        1 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}], "ports": [{"port": 8080}]}],
        }),
        // Frontends of the tenant's namespaces, on a named port.
        2 => json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app, other_app]}]},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"tenant": tenant}}, "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                "ports": [{"port": "http"}],
            }],
        }),
        // An external range, with a hole.
        3 => {
            let (b, c) = (16 + (index / 256) % 16, index % 256);
            json!({
                "podSelector": {"matchLabels": {"app": app}},
                "ingress": [{
                    "from": [{"ipBlock": {"cidr": format!("172.{b}.{c}.0/24"), "except": [format!("172.{b}.{c}.0/28")]}}],
                    "ports": [{"port": 443}],
                }],
            })
        }
        // Egress to the tenant's databases and to cluster DNS.
        4 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"tenant": tenant}}, "podSelector": {"matchLabels": {"app": "db"}}}],
                 "ports": [{"port": 5432}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            ],
        }),
        // A port range from the tenant's prod and staging namespaces.
        _ => json!({
            "podSelector": {},
            "ingress": [{
                "from": [{"namespaceSelector": {
                    "matchLabels": {"tenant": tenant},
                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}],
                }}],
                "ports": [{"port": 30000, "endPort": 30100}],
            }],
        }),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("np-{index}"), "namespace": namespace_name(namespace)},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_agent::compiler::{compile_scoped, Scope};
    use moat_agent::config::Config;

    #[test]
    fn every_shape_compiles() {
        let shape = Shape { pods: 200, pods_per_namespace: 20, policies: 60 };
        let cluster = cluster(shape).unwrap();
        assert_eq!(cluster.pods.len(), 202);
        assert_eq!(cluster.network_policies.len(), 60);
        let desired = compile_scoped(&cluster, &Config::default(), &Default::default(), Scope::Cluster).unwrap();
        assert!(!desired.policy_rules.is_empty());
        assert!(!desired.networks.is_empty(), "ipBlocks give address ranges");
    }
}
