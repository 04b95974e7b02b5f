//! NetworkPolicy semantics, from the Kubernetes API reference, on the three-namespace model
//! (x, y, z with pods a, b, c). Every case goes through `Desired::decide_at`, the same
//! function the kernel runs, over the entries the kernel would hold.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_common::verdict::{LocalEnd, Reason};
use moat_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::compiler::{compile_scoped, mapped, Desired, Scope};
use crate::config::Config;
use crate::model::policy::Policy;
use crate::model::{Cluster, ContainerPort, Namespace, ObjectKey, Pod, PodKey, Protocol};
use crate::node::cgroups::PodCgroups;

fn normalized(key: &ObjectKey, policy: &NetworkPolicy) -> Arc<Policy> {
    Arc::new(Policy::from_api(key, policy).expect("a valid policy"))
}

fn cluster(policies: &[&str]) -> Cluster {
    let mut c = Cluster::default();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        c.namespaces.insert(
            ns.to_string(),
            Namespace { name: ns.to_string(), labels: [("ns".to_string(), ns.to_string())].into() },
        );
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            let key = PodKey::new(*ns, *pod);
            let ports = vec![
                ContainerPort { name: Some("serve-80-tcp".into()), port: 80, protocol: Protocol::Tcp },
                ContainerPort { name: Some("serve-81-tcp".into()), port: 81, protocol: Protocol::Tcp },
                ContainerPort { name: Some("serve-80-udp".into()), port: 80, protocol: Protocol::Udp },
            ];
            c.pods.insert(
                key.clone(),
                Pod {
                    key,
                    uid: None,
                    labels: [("pod".to_string(), pod.to_string())].into(),
                    ips: vec![format!("10.0.{n}.{}", p + 1).parse().unwrap()],
                    node_name: None,
                    host_network: false,
                    host_pid: false,
                    ports: ports.into(),
                },
            );
        }
    }
    for (i, yaml) in policies.iter().enumerate() {
        let policy: NetworkPolicy = serde_yaml::from_str(yaml).unwrap();
        let ns = policy.metadata.namespace.clone().unwrap_or_else(|| "x".into());
        let name = policy.metadata.name.clone().unwrap_or_else(|| format!("p{i}"));
        let key = ObjectKey::new(ns, name);
        c.network_policies.insert(key.clone(), normalized(&key, &policy));
    }
    c
}

fn compiled(policies: &[&str]) -> Desired {
    compile_scoped(&cluster(policies), &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap()
}

fn ip(pod: &str) -> [u8; 16] {
    let (ns, name) = pod.split_once('/').unwrap();
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap();
    let p = ["a", "b", "c"].iter().position(|x| *x == name).unwrap();
    mapped(format!("10.0.{n}.{}", p + 1).parse().unwrap())
}

/// Both ends' verdicts, as the two nodes (or the two hooks of one node) decide them.
fn allowed(d: &Desired, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    allowed_addr(d, ip(from), ip(to), protocol, port)
}

fn allowed_addr(d: &Desired, from: [u8; 16], to: [u8; 16], protocol: u8, port: u16) -> bool {
    let src = d.remote_peer(&from);
    let dst = d.remote_peer(&to);
    let egress = d.decide_at(src, dst, protocol, port, LocalEnd::Source, 0);
    let ingress = d.decide_at(src, dst, protocol, port, LocalEnd::Destination, 0);
    egress.is_allow() && ingress.is_allow()
}

fn tcp(d: &Desired, from: &str, to: &str, port: u16) -> bool {
    allowed(d, from, to, IPPROTO_TCP, port)
}

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

/// Every pair's TCP/80 verdict as a string of 'X' (allow) and '.' per row.
fn matrix(d: &Desired, port: u16) -> Vec<String> {
    PODS.iter()
        .map(|from| PODS.iter().map(|to| if from == to || tcp(d, from, to, port) { 'X' } else { '.' }).collect())
        .collect()
}

#[test]
fn no_policy_allows_everything_within_one_tenant() {
    let d = compiled(&[]);
    // Unlabelled namespaces are separate tenants: set one tenant label for all.
    assert!(!tcp(&d, "x/a", "y/a", 80));
    let mut c = cluster(&[]);
    for ns in c.namespaces.values_mut() {
        ns.labels.insert("tenant", "t");
    }
    let d = compile_scoped(&c, &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap();
    assert!(matrix(&d, 80).iter().all(|row| row == "XXXXXXXXX"));
}

fn one_tenant(policies: &[&str]) -> Desired {
    let mut c = cluster(policies);
    for ns in c.namespaces.values_mut() {
        ns.labels.insert("tenant", "t");
    }
    compile_scoped(&c, &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap()
}

#[test]
fn deny_all_ingress_isolates_selected_pods_only() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}}"]);
    assert!(!tcp(&d, "y/b", "x/a", 80));
    assert!(!tcp(&d, "x/b", "x/a", 80));
    assert!(tcp(&d, "x/a", "x/b", 80), "egress is not affected");
    assert!(tcp(&d, "y/b", "x/b", 80));
}

#[test]
fn pod_selector_peer_means_the_policy_namespace() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"]);
    assert!(tcp(&d, "x/b", "x/a", 80));
    assert!(!tcp(&d, "y/b", "x/a", 80));
    assert!(!tcp(&d, "x/c", "x/a", 80));
}

#[test]
fn namespace_and_pod_selector_in_one_peer_versus_two_peers() {
    let both = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]"]);
    assert!(tcp(&both, "y/b", "x/a", 80));
    assert!(!tcp(&both, "y/c", "x/a", 80));
    assert!(!tcp(&both, "x/b", "x/a", 80));
    let either = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]"]);
    assert!(tcp(&either, "y/c", "x/a", 80));
    assert!(tcp(&either, "x/b", "x/a", 80));
    assert!(!tcp(&either, "z/b", "x/a", 80));
}

#[test]
fn match_expressions_operators() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}}]}]"]);
    assert!(tcp(&d, "z/a", "x/b", 80));
    assert!(tcp(&d, "x/c", "x/b", 80));
    assert!(!tcp(&d, "y/a", "x/b", 80));
    assert!(!tcp(&d, "z/b", "x/b", 80));
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: Exists}]}}]}]"]);
    assert!(tcp(&d, "z/b", "x/b", 80));
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}}]}]"]);
    assert!(!tcp(&d, "z/b", "x/b", 80));
}

#[test]
fn ports_protocols_named_ports_and_ranges() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]"]);
    assert!(tcp(&d, "y/a", "x/a", 80));
    assert!(!tcp(&d, "y/a", "x/a", 81));
    assert!(!allowed(&d, "y/a", "x/a", IPPROTO_UDP, 80), "protocol defaults to TCP");
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]}]"]);
    assert!(tcp(&d, "y/a", "x/a", 81));
    assert!(!tcp(&d, "y/a", "x/a", 80));
    assert!(allowed(&d, "y/a", "x/a", IPPROTO_UDP, 80));
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 79, endPort: 80}]}]"]);
    assert!(tcp(&d, "y/a", "x/a", 80));
    assert!(!tcp(&d, "y/a", "x/a", 81));
}

#[test]
fn egress_named_port_resolves_on_the_destination() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-81-tcp}]}]"]);
    assert!(tcp(&d, "x/a", "y/b", 81));
    assert!(!tcp(&d, "x/a", "y/b", 80));
}

#[test]
fn empty_rules_versus_absent_and_policies_add_up() {
    let deny = "metadata: {namespace: x, name: deny}\nspec: {podSelector: {}, ingress: []}";
    let allow_b = "metadata: {namespace: x, name: allow}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]";
    let d = one_tenant(&[deny]);
    assert!(!tcp(&d, "y/a", "x/a", 80));
    let d = one_tenant(&[deny, allow_b]);
    assert!(tcp(&d, "y/a", "x/a", 80));
    assert!(!tcp(&d, "z/a", "x/a", 80));
    let all = one_tenant(&["metadata: {namespace: x}\nspec: {podSelector: {}, ingress: [{}]}"]);
    assert!(tcp(&all, "z/a", "x/a", 80));
}

#[test]
fn both_egress_and_ingress_must_allow() {
    let egress_deny = "metadata: {namespace: y, name: eg}\nspec: {podSelector: {}, policyTypes: [Egress]}";
    let d = one_tenant(&[egress_deny]);
    assert!(!tcp(&d, "y/a", "x/a", 80));
    assert!(tcp(&d, "x/a", "y/a", 80), "replies are the flow table's job, not policy's");
}

#[test]
fn ip_blocks_with_except_match_pod_addresses_and_outside() {
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.2/32]}}]}]"]);
    assert!(tcp(&d, "y/a", "x/a", 80));
    assert!(!tcp(&d, "y/b", "x/a", 80));
    assert!(!tcp(&d, "z/a", "x/a", 80));
    let d = one_tenant(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"]);
    let outside: [u8; 16] = mapped("192.0.2.9".parse().unwrap());
    let elsewhere: [u8; 16] = mapped("198.51.100.9".parse().unwrap());
    assert!(allowed_addr(&d, ip("x/a"), outside, IPPROTO_TCP, 443));
    assert!(!allowed_addr(&d, ip("x/a"), elsewhere, IPPROTO_TCP, 443));
    assert!(!tcp(&d, "x/a", "y/a", 80));
}

#[test]
fn tenant_floor_is_beneath_policy() {
    // x and y are different tenants here: an allow-all policy cannot widen the floor.
    let d = compiled(&["metadata: {namespace: x}\nspec: {podSelector: {}, ingress: [{}]}"]);
    assert!(!tcp(&d, "y/a", "x/a", 80));
    let src = d.remote_peer(&ip("y/a"));
    let dst = d.remote_peer(&ip("x/a"));
    assert_eq!(d.decide_at(src, dst, IPPROTO_TCP, 80, LocalEnd::Destination, 0), Reason::CrossTenant);
}

#[test]
fn default_deny_in_tenant_switch() {
    let mut c = cluster(&["metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]"]);
    for ns in c.namespaces.values_mut() {
        ns.labels.insert("tenant", "t");
    }
    let config = Config { default_deny_in_tenant: true, ..Config::default() };
    let d = compile_scoped(&c, &config, &PodCgroups::new(), Scope::Cluster).unwrap();
    // As if every namespace had a default-deny policy for both directions: x/b's egress is
    // selected by nothing, so it is denied even though x/a's ingress allows it.
    assert!(!tcp(&d, "x/b", "x/a", 80));
    assert!(!tcp(&d, "x/a", "x/b", 80));
    let key = ObjectKey::new("x", "egress");
    let api = serde_yaml::from_str("spec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}").unwrap();
    c.network_policies.insert(key.clone(), normalized(&key, &api));
    let d = compile_scoped(&c, &config, &PodCgroups::new(), Scope::Cluster).unwrap();
    assert!(tcp(&d, "x/b", "x/a", 80), "both directions now allowed by policies");
    assert!(!tcp(&d, "x/a", "x/b", 80), "x/b's ingress is selected by nothing");
    // Admin exceptions are not in-tenant defaults: cluster DNS stays reachable.
}

#[test]
fn one_policy_change_rewrites_only_its_entries() {
    let base = ["metadata: {namespace: x, name: p1}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80}]}]}", "metadata: {namespace: y, name: p2}\nspec: {podSelector: {}, ingress: [{ports: [{port: 81}]}]}"];
    let before = one_tenant(&base);
    let after = one_tenant(&[base[0], "metadata: {namespace: y, name: p2}\nspec: {podSelector: {}, ingress: [{ports: [{port: 82}]}]}"]);
    let changed: Vec<_> = before.policy_rules.keys().filter(|k| !after.policy_rules.contains_key(k)).collect();
    assert!(!changed.is_empty());
    let p1_set = before.remote[&ip("x/a")].ingress_policy;
    assert!(changed.iter().all(|(_, m)| m.set != p1_set));
}

#[test]
fn explanations_name_the_rules() {
    let d = one_tenant(&["metadata: {namespace: x, name: web}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 81}]}, {from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"]);
    let src = d.remote_peer(&ip("y/a"));
    let dst = d.remote_peer(&ip("x/a"));
    let rules = d.allowing_rules(dst.endpoint.ingress_policy, &src, IPPROTO_TCP, 81);
    let names: Vec<String> = rules.iter().map(|r| format!("{}#{}", r.policy, r.index)).collect();
    assert_eq!(names, vec!["x/web#0", "x/web#1"]);
}
