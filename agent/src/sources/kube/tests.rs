//! The API server source against the in-process test API server (real list/watch).

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use moat_testapi::{kubeconfig, Store, TestServer};
use serde_json::{json, Value};

use super::KubeSource;
use crate::model::{Cluster, ObjectKey};

const DEADLINE: Duration = Duration::from_secs(20);

async fn client(server: &TestServer) -> Client {
    let file = Kubeconfig::from_yaml(&kubeconfig(&server.url())).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

fn namespace(name: &str, tenant: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"tenant": tenant}}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn node(name: &str, profile: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"profile": profile}}})
}

/// Polls the source until `done` holds for the newest cluster (deadline, not sleeps).
async fn until(source: &mut KubeSource, last: &mut Cluster, done: impl Fn(&Cluster) -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(loaded) = source.poll() {
                *last = loaded.cluster;
            }
            if done(last) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), source.changed()).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "condition not reached within {DEADLINE:?}; last cluster: {last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_everything_then_follows_changes() {
    let store = Store::new();
    for object in [namespace("a", "x"), namespace("b", "y"), pod("a", "p", "10.0.0.1"), node("n1", "gpu"), node("n2", "other")] {
        store.apply(object).expect("seed");
    }
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, Some("n1"));
    let first = tokio::time::timeout(DEADLINE, source.initial()).await.expect("initial sync");
    let mut cluster = first.cluster;
    assert_eq!(cluster.namespaces.len(), 2);
    assert_eq!(cluster.pods[&ObjectKey::new("a", "p")].uid.as_deref(), Some("uid-p"));
    assert_eq!(cluster.node_labels.get("profile").map(String::as_str), Some("gpu"), "only this node's labels");
    assert!(source.sync_state().is_synced());

    store.apply(pod("b", "q", "10.0.0.2")).expect("add pod");
    store.apply(namespace("a", "z")).expect("relabel");
    until(&mut source, &mut cluster, |c| {
        c.pods.contains_key(&ObjectKey::new("b", "q")) && c.namespaces["a"].labels.get("tenant").map(String::as_str) == Some("z")
    })
    .await;

    // A pod the manifests source would refuse: refused here too, its last good version kept.
    store.apply(pod("a", "p", "127.0.0.1")).expect("bad pod");
    store.apply(node("n1", "cpu")).expect("node relabel");
    until(&mut source, &mut cluster, |c| c.node_labels.get("profile").map(String::as_str) == Some("cpu")).await;
    assert_eq!(cluster.pods[&ObjectKey::new("a", "p")].ips, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);

    store.delete(moat_testapi::PODS, Some("b"), "q").expect("delete");
    until(&mut source, &mut cluster, |c| !c.pods.contains_key(&ObjectKey::new("b", "q"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists_and_converges() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, None);
    let mut cluster = tokio::time::timeout(DEADLINE, source.initial()).await.expect("initial sync").cluster;
    let lists = source.sync_state().lists();

    // Changes made while the watches are dropped and history is compacted: only a re-list
    // can see them.
    store.apply(namespace("c", "y")).expect("add");
    store.compact();
    store.drop_watches();
    store.apply(pod("c", "r", "10.0.0.3")).expect("add pod");
    until(&mut source, &mut cluster, |c| c.namespaces.contains_key("c") && c.pods.contains_key(&ObjectKey::new("c", "r"))).await;
    assert!(cluster.namespaces.contains_key("a"), "nothing lost in the re-list");
    let relisted = tokio::time::timeout(DEADLINE, async {
        while source.sync_state().lists() <= lists {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(relisted.is_ok(), "no re-list after the compaction");
}
