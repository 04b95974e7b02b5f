//! Explain with a node profile: a Node manifest (or --node-labels) makes a pod foreign, and
//! explain reports what the node's own entries decide.

use std::path::PathBuf;

use moat_common::verdict::{LocalEnd, Peer};

use super::*;
use crate::compiler::Scope;
use crate::config::Config;
use crate::model::flow::{Family, Target};
use crate::node::cgroups::PodCgroups;
use crate::sources::manifests;
use crate::model::Protocol;
use crate::node::cgroups::PodRef;

fn pod(ns: &str, name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
}

/// alpha/web, beta/web, beta/api and a Node reserved for alpha, in one file.
fn manifests(dir: &std::path::Path) -> PathBuf {
    let text = [
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: alpha\n  labels:\n    tenant: alpha\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: beta\n  labels:\n    tenant: beta\n".to_string(),
        pod("alpha", "web", "10.0.0.1"),
        pod("beta", "web", "10.0.0.2"),
        pod("beta", "api", "10.0.0.3"),
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    node-restriction.kubernetes.io/tenant: alpha\n".to_string(),
    ]
    .join("---\n");
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn explain_with(cluster: &Cluster, config: &Config, from: &str, to: &str) -> Explanation {
    let desired = compiler::compile_scoped(cluster, config, &PodCgroups::new(), Scope::Cluster).unwrap();
    let (from, to) = (PodKey::parse(from).unwrap(), PodKey::parse(to).unwrap());
    explain(cluster, &desired, &from, &to, Target::Port(80, Protocol::Tcp), Family::V4).unwrap()
}

#[test]
fn a_node_manifest_makes_a_pod_foreign_and_explain_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = manifests::load(&[manifests(dir.path())]).unwrap().cluster;
    let config = Config::default();
    let within_beta = explain_with(&cluster, &config, "beta/web", "beta/api");
    assert_eq!(within_beta.verdict, "deny", "{within_beta:?}");
    assert!(within_beta.reasons[0].starts_with("node.foreign-tenant:"), "{within_beta:?}");
    assert!(
        within_beta.reasons.iter().any(|r| r.contains("beta/web is tenant beta on a node reserved for tenant alpha (node label node-restriction.kubernetes.io/tenant=alpha); all its traffic is denied")),
        "{within_beta:?}"
    );
    assert_eq!(within_beta.reasons.len(), 3, "both ends are foreign: {within_beta:?}");

    // What the node's kernel decides over the entries it writes is the same.
    let cgroups: PodCgroups = [(7, PodRef::Key(PodKey::new("beta", "web")))].into();
    let node = compiler::compile(&cluster, &config, &cgroups).unwrap();
    let local = Peer::local(node.local.get(&7).copied());
    let reason = node.decide_at(local, node.remote_peer(&compiler::mapped("10.0.0.3".parse().unwrap())), 6, 80, LocalEnd::Source, 0);
    assert_eq!(reason.name(), "node.foreign-tenant");

    let at_home = explain_with(&cluster, &config, "alpha/web", "alpha/web");
    assert_eq!(at_home.verdict, "allow", "{at_home:?}");
}

#[test]
fn detect_mode_allows_with_a_note_and_node_labels_override_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = manifests::load(&[manifests(dir.path())]).unwrap().cluster;
    let mut detect = Config::default();
    detect.guard.detections.insert("node.foreign-tenant".into(), GuardMode::Detect);
    let noted = explain_with(&cluster, &detect, "beta/web", "beta/api");
    assert_eq!(noted.verdict, "allow", "{noted:?}");
    assert!(noted.reasons.iter().any(|r| r.contains("beta/api is tenant beta") && r.contains("reported, not blocked")), "{noted:?}");

    // --node-labels: the node is beta's now.
    cluster.node_labels = parse_labels("node-restriction.kubernetes.io/tenant=beta,zone=a").unwrap();
    let config = Config::default();
    assert_eq!(explain_with(&cluster, &config, "beta/web", "beta/api").verdict, "allow");
    let alpha = explain_with(&cluster, &config, "alpha/web", "beta/web");
    assert!(alpha.reasons.iter().any(|r| r.contains("alpha/web is tenant alpha on a node reserved for tenant beta")), "{alpha:?}");
}

#[test]
fn node_labels_are_key_value_pairs() {
    assert_eq!(parse_labels("a=b,c=").unwrap(), [("a".to_string(), "b".to_string()), ("c".to_string(), String::new())].into());
    assert!(parse_labels("a").unwrap_err().contains("\"a\" is not KEY=VALUE"));
    assert!(parse_labels("=b").is_err());
}

#[test]
fn verdicts_are_marked_incomplete_while_unenforced_policies_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = manifests(dir.path());
    // The older API version of the admin's policies: reported, not enforced.
    let anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata:\n  name: deny-all\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{nodes: {}}]}\n";
    std::fs::write(dir.path().join("anp.yaml"), anp).unwrap();
    let loaded = manifests::load(&[dir.path().to_path_buf()]).unwrap();
    let unenforced = loaded.unenforced.lines();
    assert_eq!(unenforced, vec!["AdminNetworkPolicy deny-all (policy.networking.k8s.io/v1alpha1)"]);
    let mut results = vec![explain_with(&loaded.cluster, &Config::default(), "alpha/web", "alpha/web")];
    assert!(results[0].complete);
    incomplete(&mut results, &unenforced);
    assert!(!results[0].complete);
    assert!(results[0].reasons.last().unwrap().starts_with("INCOMPLETE: 1 policy object(s)"), "{:?}", results[0]);
    // Without such objects nothing changes.
    let mut clean = vec![explain_with(&manifests::load(&[path]).unwrap().cluster, &Config::default(), "alpha/web", "alpha/web")];
    incomplete(&mut clean, &[]);
    assert!(clean[0].complete && !clean[0].reasons.iter().any(|r| r.contains("INCOMPLETE")));
}

#[test]
fn cluster_network_policies_are_evaluated_in_tier_order_and_the_floor_stays_first() {
    let dir = tempfile::tempdir().unwrap();
    let text = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha, labels: {tenant: alpha}}\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {tenant: beta}}\n".to_string(),
        pod("alpha", "web", "10.0.0.1"),
        pod("alpha", "db", "10.0.0.4"),
        pod("beta", "web", "10.0.0.2"),
        // Admin: accept everything into alpha/db from anywhere (cannot open the floor), pass
        // alpha-internal traffic otherwise; Baseline: deny within alpha.
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  ingress:\n  - {name: open-db, action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}\n  - {name: alpha-to-baseline, action: Pass, from: [{namespaces: {matchLabels: {tenant: alpha}}}]}\n".to_string(),
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: baseline}\nspec:\n  tier: Baseline\n  priority: 0\n  subject: {namespaces: {matchLabels: {tenant: alpha}}}\n  ingress:\n  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}\n".to_string(),
    ]
    .join("---\n");
    std::fs::write(dir.path().join("cluster.yaml"), text).unwrap();
    let loaded = manifests::load(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(loaded.cluster.cluster_network_policies.len(), 2);
    assert!(loaded.unenforced.lines().is_empty(), "enforced, so not reported");
    let cluster = loaded.cluster;
    let desired = compiler::compile_scoped(&cluster, &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap();
    let explain = |from: &str, to: &str, port: u16| {
        let (from, to) = (PodKey::parse(from).unwrap(), PodKey::parse(to).unwrap());
        explain(&cluster, &desired, &from, &to, Target::Port(port, Protocol::Tcp), Family::V4).unwrap()
    };
    let result = explain("alpha/web", "alpha/db", 80);
    assert_eq!(result.verdict, "deny", "{result:#?}");
    assert!(result.reasons.iter().any(|l| l == "ingress of alpha/db: deny by Baseline tier, ClusterNetworkPolicy baseline (priority 0), rule 0 \"deny-all\": Deny (after Admin tier, ClusterNetworkPolicy admin (priority 5), rule 1 \"alpha-to-baseline\": Pass)"), "{result:#?}");
    assert!(result.reasons.iter().any(|l| l == "egress of alpha/web: no NetworkPolicy selects it for egress; allowed"), "{result:#?}");
    let result = explain("alpha/web", "alpha/db", 5432);
    assert_eq!(result.verdict, "allow", "{result:#?}");
    assert!(result.reasons.iter().any(|l| l == "ingress of alpha/db: accept by Admin tier, ClusterNetworkPolicy admin (priority 5), rule 0 \"open-db\": Accept"), "{result:#?}");
    // Across tenants the Admin Accept matches, yet the floor denies first.
    let result = explain("beta/web", "alpha/db", 5432);
    assert_eq!(result.verdict, "deny", "{result:#?}");
    assert!(result.reasons[0].contains("crosses tenants and no exception allows it"), "{result:#?}");
}

#[test]
fn a_flow_to_a_node_address_names_the_nodes_rule_that_decides_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str, role: &str, address: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{role: {role}}}}}\nstatus: {{addresses: [{{type: InternalIP, address: {address}}}]}}\n")
    };
    let text = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha, labels: {tenant: alpha}}\n".to_string(),
        pod("alpha", "web", "10.0.0.1"),
        pod("alpha", "db", "10.0.0.4"),
        node("n1", "worker", "192.0.2.1"),
        node("n2", "infra", "192.0.2.2"),
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: no-infra}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  egress:\n  - {name: infra-nodes, action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}\n".to_string(),
    ]
    .join("---\n");
    std::fs::write(dir.path().join("cluster.yaml"), text).unwrap();
    let config = Config { node_name: Some("n1".into()), ..Config::default() };
    let loaded = manifests::load_for_node(&[dir.path().to_path_buf()], Some("n1")).unwrap();
    assert!(loaded.unenforced.lines().is_empty(), "nodes peers are enforced: {:?}", loaded.unenforced.lines());
    let cluster = loaded.cluster;
    let desired = compiler::compile_scoped(&cluster, &config, &PodCgroups::new(), Scope::Cluster).unwrap();
    let to = |address: &str| {
        let from = PodKey::parse("alpha/web").unwrap();
        explain_to_address(&cluster, &desired, &from, address.parse().unwrap(), Target::Port(9100, Protocol::Tcp)).unwrap()
    };
    let result = to("192.0.2.2");
    assert_eq!(result.verdict, "deny", "{result:#?}");
    assert!(result.reasons.iter().any(|l| l == "egress of alpha/web: deny by Admin tier, ClusterNetworkPolicy no-infra (priority 5), rule 0 \"infra-nodes\": Deny"), "{result:#?}");
    assert!(!result.reasons.iter().any(|l| l.starts_with("ingress")), "no ingress side at a node: {result:#?}");
    let result = to("192.0.2.1");
    assert_eq!(result.verdict, "allow", "a worker node: {result:#?}");
    assert_eq!(to("198.51.100.1").verdict, "allow", "no Node's address");
    // A pod's own address is that pod, ingress included.
    let result = to("10.0.0.4");
    assert_eq!((result.verdict, result.to.as_str()), ("allow", "10.0.0.4 (alpha/db)"), "{result:#?}");
    assert!(result.reasons.iter().any(|l| l.starts_with("ingress of alpha/db")), "{result:#?}");
}

#[test]
fn a_pod_to_itself_is_allowed_whatever_isolates_it_unless_it_is_host_network() {
    let dir = tempfile::tempdir().unwrap();
    let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  namespace: beta\n\
                    spec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let path = dir.path().join("deny.yaml");
    std::fs::write(&path, deny_all).unwrap();
    let mut cluster = manifests::load(&[manifests(dir.path()), path]).unwrap().cluster;
    // No Node profile: only the policy decides.
    let config = Config::default();
    cluster.nodes.clear();
    let itself = explain_with(&cluster, &config, "beta/api", "beta/api");
    assert_eq!(itself.verdict, "allow", "{itself:?}");
    assert!(itself.reasons[0].starts_with("same-pod:"), "{itself:?}");
    let other = explain_with(&cluster, &config, "beta/api", "beta/web");
    assert_eq!(other.verdict, "deny", "{other:?}");
    if let Some(pod) = cluster.pods.get_mut(&PodKey::new("beta", "api")) {
        pod.host_network = true;
    }
    // A hostNetwork pod's address is the node's: explain names no pod by it, itself neither.
    let desired = compiler::compile_scoped(&cluster, &config, &PodCgroups::new(), Scope::Cluster).unwrap();
    let api = PodKey::new("beta", "api");
    let host = explain(&cluster, &desired, &api, &api, Target::Port(80, Protocol::Tcp), Family::V4);
    assert!(host.is_err(), "{host:?}");
}
