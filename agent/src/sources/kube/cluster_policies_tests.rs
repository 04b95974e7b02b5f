//! The ClusterNetworkPolicy watch and the discovery of policy kinds moat does not enforce,
//! against the in-process test API server (real list/watch, CRDs installed and removed).

use moat_testapi::kinds::{CALICO_GLOBAL_NETWORK_POLICIES, CLUSTER_NETWORK_POLICIES};
use moat_testapi::{Store, TestServer};
use serde_json::{json, Value};

use super::tests::{client, namespace, until, until_true, DEADLINE, DISCOVERY};
use super::KubeSource;
use crate::model::cnp::{Action, Tier};
use crate::model::Cluster;

fn cnp(name: &str, priority: u32, egress: Value) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}}, "egress": egress}
    })
}

fn deny_to(cidr: &str) -> Value {
    json!([{"action": "Deny", "to": [{"networks": [cidr]}]}])
}

/// Name → (priority, first egress action) of the policies in the model.
fn policies(cluster: &Cluster) -> Vec<(String, u16, Option<Action>)> {
    let policies = cluster.cluster_network_policies.iter();
    policies.map(|(name, p)| (name.clone(), p.priority, p.egress.first().map(|r| r.action))).collect()
}

async fn start(store: &Store) -> (TestServer, KubeSource, Cluster) {
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, None, DISCOVERY);
    let first = tokio::time::timeout(DEADLINE, source.initial()).await.expect("initial sync");
    (server, source, first.cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_are_enforced_once_their_crd_appears_and_dropped_when_it_goes() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    // No CRD: the model syncs as ever, with no cluster policies and nothing to report.
    let (_server, mut source, mut cluster) = start(&store).await;
    assert!(cluster.cluster_network_policies.is_empty());
    tokio::time::sleep(DISCOVERY * 3).await;
    assert!(source.unenforced().is_empty(), "{:?}", source.unenforced());

    assert!(store.apply(cnp("early", 5, deny_to("10.0.0.0/8"))).is_err(), "not served before its CRD is installed");
    store.install(CLUSTER_NETWORK_POLICIES);
    store.apply(cnp("deny-all", 5, deny_to("0.0.0.0/0"))).expect("cnp");
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.contains_key("deny-all")).await;
    assert_eq!(policies(&cluster), vec![("deny-all".into(), 5, Some(Action::Deny))]);
    assert_eq!(cluster.cluster_network_policies["deny-all"].tier, Tier::Admin);

    // Changed at runtime; a bad version is refused and the last good one stays; a bad new
    // object never enters the model.
    store.apply(cnp("deny-all", 7, json!([{"action": "Pass", "to": [{"networks": ["0.0.0.0/0"]}]}]))).expect("update");
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.get("deny-all").is_some_and(|p| p.priority == 7)).await;
    store.apply(cnp("deny-all", 7, deny_to("10.0.0.0/33"))).expect("bad update");
    store.apply(cnp("too-high", 5000, deny_to("10.0.0.0/8"))).expect("bad new");
    store.apply(cnp("after", 9, deny_to("10.9.0.0/16"))).expect("cnp");
    // The watch delivers in order: once `after` is in, both bad ones were seen.
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.contains_key("after")).await;
    assert_eq!(
        policies(&cluster),
        vec![("after".into(), 9, Some(Action::Deny)), ("deny-all".into(), 7, Some(Action::Pass))]
    );

    // A `nodes` peer is enforced like any other: nothing to report.
    store.apply(cnp("to-nodes", 11, json!([{"action": "Deny", "to": [{"nodes": {}}]}]))).expect("cnp");
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.contains_key("to-nodes")).await;
    assert!(source.unenforced().is_empty(), "{:?}", source.unenforced());

    store.delete(CLUSTER_NETWORK_POLICIES, None, "after").expect("delete");
    until(&mut source, &mut cluster, |c| !c.cluster_network_policies.contains_key("after")).await;
    // The CRD removed: its objects go from the model, and the agent carries on.
    store.uninstall(CLUSTER_NETWORK_POLICIES);
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.is_empty()).await;
    assert!(source.unenforced().is_empty());
    assert!(source.sync_state().is_healthy());
    // And back: noticed again.
    store.install(CLUSTER_NETWORK_POLICIES);
    store.apply(cnp("again", 1, deny_to("10.1.0.0/16"))).expect("cnp");
    until(&mut source, &mut cluster, |c| c.cluster_network_policies.contains_key("again")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_state_holds_the_cluster_network_policies_already_there() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    store.install(CLUSTER_NETWORK_POLICIES);
    store.apply(cnp("deny-all", 5, deny_to("0.0.0.0/0"))).expect("cnp");
    // Its first apply prunes the maps: it must not run without an admin's Deny rules.
    let (_server, _source, cluster) = start(&store).await;
    assert_eq!(policies(&cluster), vec![("deny-all".into(), 5, Some(Action::Deny))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_policy_kinds_are_reported_and_never_hold_up_the_start() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    store.install(CLUSTER_NETWORK_POLICIES);
    store.forbid(CLUSTER_NETWORK_POLICIES);
    // RBAC without clusternetworkpolicies: the agent starts, and says it cannot enforce them.
    let (_server, source, cluster) = start(&store).await;
    assert!(cluster.cluster_network_policies.is_empty());
    let lines = || source.unenforced().lines();
    until_true("the unreadable ClusterNetworkPolicy reported", DEADLINE, || !lines().is_empty()).await;
    let lines = lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ClusterNetworkPolicy (policy.networking.k8s.io): served by the API server, objects unknown (list forbidden: "), "{lines:?}");

    // Another vendor's policy kind: its objects reported by name while listable, gone once
    // deleted; reported as served with its objects unknown once the agent may not list it.
    store.install(CALICO_GLOBAL_NETWORK_POLICIES);
    store.apply(json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"}})).expect("calico");
    let objects = || source.unenforced().objects.iter().map(ToString::to_string).collect::<Vec<_>>();
    until_true("the calico object reported", DEADLINE, || !objects().is_empty()).await;
    assert_eq!(objects(), vec!["GlobalNetworkPolicy g (crd.projectcalico.org/v1)"]);
    store.delete(CALICO_GLOBAL_NETWORK_POLICIES, None, "g").expect("delete");
    until_true("a deleted object is no longer reported", DEADLINE, || objects().is_empty()).await;
    store.forbid(CALICO_GLOBAL_NETWORK_POLICIES);
    let unlisted = || source.unenforced().unlisted;
    until_true("the unlistable kind reported", DEADLINE, || unlisted().len() == 2).await;
    let kinds: Vec<String> = unlisted().keys().map(ToString::to_string).collect();
    assert_eq!(kinds, vec!["GlobalNetworkPolicy (crd.projectcalico.org)", "ClusterNetworkPolicy (policy.networking.k8s.io)"]);
    let calico = unlisted().into_values().find(|why| why.contains("globalnetworkpolicies")).expect("calico");
    assert!(calico.starts_with("list forbidden: globalnetworkpolicies.crd.projectcalico.org is forbidden"), "{calico}");
    store.uninstall(CALICO_GLOBAL_NETWORK_POLICIES);
    until_true("the kind gone with its CRD", DEADLINE, || unlisted().len() == 1).await;
    assert!(source.sync_state().is_healthy());
}
