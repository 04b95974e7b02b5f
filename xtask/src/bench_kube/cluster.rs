//! The synthetic cluster the kube bench serves: one namespace per 10 pods, one tenant per 10
//! namespaces, two NetworkPolicies per namespace. Pods carry the labels of Deployments (`app`,
//! `pod-template-hash`, `tier`) and named ports; the policies mix pod and namespace
//! selectors, ipBlocks with `except`, named and numbered ports, ingress and egress. Optionally
//! ClusterNetworkPolicies an admin of such a cluster writes, in both tiers.

use serde_json::{json, Value};

pub const PODS_PER_NAMESPACE: usize = 10;
pub const NAMESPACES_PER_TENANT: usize = 10;
pub const POLICIES_PER_NAMESPACE: usize = 2;

pub fn namespace(n: usize, tenant: &str) -> Value {
    let env = if n.is_multiple_of(3) { "prod" } else { "dev" };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": format!("ns{n}"), "labels": {"tenant": tenant, "env": env, "team": format!("team{}", n % 7)}}})
}

pub fn tenant_of(n: usize) -> String {
    format!("t{}", n / NAMESPACES_PER_TENANT)
}

/// The node the agent runs as: the pods with cgroups on the lab are scheduled to it.
pub const LAB_NODE: &str = "lab-node";

/// Pod `name` in namespace `n`; `i` numbers it cluster-wide (its address and uid). A `local`
/// pod is scheduled to [`LAB_NODE`], the others spread over 100 nodes.
pub fn pod(n: usize, name: &str, i: usize, local: bool) -> Value {
    let node = if local { LAB_NODE.to_string() } else { format!("node{}", i % 100) };
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    let app = format!("app{}", i % 3);
    let tier = if i.is_multiple_of(2) {
        "frontend"
    } else {
        "backend"
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": format!("ns{n}"), "uid": format!("00000000-0000-4000-8000-{i:012}"),
                     "labels": {"app": app, "pod-template-hash": format!("{:08x}", (i / 3) * 2654435761usize % 0xffff_ffff), "tier": tier}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1",
                 "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// Policy `k` of namespace `n`.
pub fn policy(n: usize, k: usize) -> Value {
    let name = format!("np{k}");
    let spec = match k % POLICIES_PER_NAMESPACE {
        // Ingress to app0 from the namespace's frontends and the tenant's namespaces, on the
        // named port and a numbered one.
        0 => json!({"podSelector": {"matchLabels": {"app": "app0"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}},
                                          {"namespaceSelector": {"matchLabels": {"tenant": tenant_of(n)}}}],
                                 "ports": [{"port": "http"}, {"port": 8443}]}]}),
        // app1 in and out: scrapes from the cluster network minus a range, egress to prod
        // namespaces' app2 on the named metrics port and to the internet minus link-local.
        _ => {
            json!({"podSelector": {"matchLabels": {"app": "app1"}}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", n % 64)]}}],
                                 "ports": [{"protocol": "TCP", "port": 9090}]}],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {"matchLabels": {"app": "app2"}}}],
                                "ports": [{"port": "metrics"}]},
                               {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
                                "ports": [{"protocol": "TCP", "port": 443}]}]})
        }
    };
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": format!("ns{n}")}, "spec": spec})
}

/// The policy the bench adds and deletes: every pod of the namespace, from its tenant.
pub fn added_policy(n: usize, name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": format!("ns{n}")},
           "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tenant": tenant_of(n)}}}]}]}})
}

/// `pods` pods in `pods / 10` namespaces and `cluster_policies` ClusterNetworkPolicies, as
/// one List. The pods of the first `local_namespaces` run on [`LAB_NODE`]; `extra_policies`
/// more NetworkPolicies go in each namespace after them (of the same shapes, so they select
/// pods of their own namespaces only: none of this node's).
pub fn cluster(pods: usize, cluster_policies: usize, extra_policies: usize, local_namespaces: usize) -> Value {
    let namespaces = pods / PODS_PER_NAMESPACE;
    let mut items =
        Vec::with_capacity(namespaces * (1 + PODS_PER_NAMESPACE + POLICIES_PER_NAMESPACE));
    for n in 0..namespaces {
        items.push(namespace(n, &tenant_of(n)));
        for p in 0..PODS_PER_NAMESPACE {
            items.push(pod(n, &format!("pod{p}"), n * PODS_PER_NAMESPACE + p, n < local_namespaces));
        }
        for k in 0..POLICIES_PER_NAMESPACE {
            items.push(policy(n, k));
        }
        if n >= local_namespaces {
            items.extend((0..extra_policies).map(|k| policy(n, POLICIES_PER_NAMESPACE + k)));
        }
    }
    items.extend((0..cluster_policies).map(cluster_policy));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The `k`th ClusterNetworkPolicy (`v1alpha2`), cycling through what a shared cluster's admin
/// writes: no metadata endpoint, monitoring from team0 on the named port, tenants' dev
/// namespaces kept off prod ones (Baseline), a team's namespaces closed to another's on 8443.
pub fn cluster_policy(k: usize) -> Value {
    let (tier, spec) = match k % 4 {
        0 => ("Admin", json!({"subject": {"namespaces": {}},
                              "egress": [{"name": "metadata", "action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]})),
        1 => ("Admin", json!({"subject": {"namespaces": {}},
                              "ingress": [{"name": "scrape", "action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": "team0"}}}],
                                           "protocols": [{"destinationNamedPort": "metrics"}]}]})),
        2 => ("Baseline", json!({"subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
                                 "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"env": "dev"}}}]}]})),
        _ => ("Admin", json!({"subject": {"namespaces": {"matchLabels": {"team": format!("team{}", k % 7)}}},
                              "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": format!("team{}", (k + 1) % 7)}},
                                                                                 "podSelector": {"matchLabels": {"tier": "frontend"}}}}],
                                           "protocols": [{"tcp": {"destinationPort": {"number": 8443}}}]}]})),
    };
    let mut spec = spec;
    spec["tier"] = json!(tier);
    spec["priority"] = json!(10 + k);
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": format!("cnp{k}")}, "spec": spec})
}
