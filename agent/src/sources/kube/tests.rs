//! The API server source against the in-process test API server (real list/watch).

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use moat_testapi::{kubeconfig, Store, TestServer};
use serde_json::{json, Value};

use super::KubeSource;
use crate::model::{Cluster, ObjectKey};

pub(super) const DEADLINE: Duration = Duration::from_secs(20);
pub(super) const DISCOVERY: Duration = Duration::from_millis(100);

pub(super) async fn client(server: &TestServer) -> Client {
    let file = Kubeconfig::from_yaml(&kubeconfig(&server.url())).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

pub(super) fn namespace(name: &str, tenant: &str) -> Value {
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
    let address = format!("192.0.2.{}", name.trim_start_matches('n'));
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"profile": profile}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]}
    })
}

fn service(ns: &str, name: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ips.first().copied().unwrap_or("None"), "clusterIPs": if ips.is_empty() { vec!["None"] } else { ips.to_vec() }, "ports": [{"port": 80}]}
    })
}

/// Polls the source until `done` holds for the newest cluster (deadline, not sleeps).
pub(super) async fn until(source: &mut KubeSource, last: &mut Cluster, done: impl Fn(&Cluster) -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            for change in source.poll().into_iter().flatten() {
                last.apply(change);
            }
            if done(last) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), source.changed()).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "condition not reached within {DEADLINE:?}; last cluster: {last:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_everything_then_follows_changes() {
    let store = Store::new();
    for object in [
        namespace("a", "x"),
        namespace("b", "y"),
        pod("a", "p", "10.0.0.1"),
        node("n1", "gpu"),
        node("n2", "other"),
    ] {
        store.apply(object).expect("seed");
    }
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, Some("n1"), DISCOVERY);
    let first = tokio::time::timeout(DEADLINE, source.initial())
        .await
        .expect("initial sync");
    let mut cluster = first.cluster;
    assert_eq!(cluster.namespaces.len(), 2);
    assert_eq!(
        cluster.pods[&ObjectKey::new("a", "p")].uid.as_deref(),
        Some("uid-p")
    );
    assert_eq!(
        cluster.node_labels.get("profile"),
        Some("gpu"),
        "only this node's labels"
    );
    // Every Node, with its addresses (`nodes` peers select any of them).
    let addresses = |c: &crate::model::Cluster, name: &str| c.nodes.get(name).map(|n| n.addresses.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(addresses(&cluster, "n1"), Some(vec!["192.0.2.1".to_string()]));
    assert_eq!(addresses(&cluster, "n2"), Some(vec!["192.0.2.2".to_string()]));
    assert!(source.sync_state().is_synced());

    store.apply(pod("b", "q", "10.0.0.2")).expect("add pod");
    store.apply(namespace("a", "z")).expect("relabel");
    until(&mut source, &mut cluster, |c| {
        c.pods.contains_key(&ObjectKey::new("b", "q"))
            && c.namespaces["a"].labels.get("tenant") == Some("z")
    })
    .await;

    // A pod the manifests source would refuse: refused here too, its last good version kept.
    store.apply(pod("a", "p", "127.0.0.1")).expect("bad pod");
    store.apply(node("n1", "cpu")).expect("node relabel");
    until(&mut source, &mut cluster, |c| {
        c.node_labels.get("profile") == Some("cpu")
    })
    .await;
    // Another Node's changes reach the model, never this node's labels.
    store.apply(node("n3", "gpu")).expect("node added");
    store.delete(moat_testapi::NODES, None, "n2").expect("node deleted");
    until(&mut source, &mut cluster, |c| c.nodes.contains_key("n3") && !c.nodes.contains_key("n2")).await;
    assert_eq!(cluster.node_labels.get("profile"), Some("cpu"));
    store.delete(moat_testapi::NODES, None, "n1").expect("this node deleted");
    until(&mut source, &mut cluster, |c| !c.nodes.contains_key("n1")).await;
    assert!(cluster.node_labels.is_empty(), "this Node gone: no node labels");
    assert_eq!(
        cluster.pods[&ObjectKey::new("a", "p")].ips,
        vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    store
        .delete(moat_testapi::PODS, Some("b"), "q")
        .expect("delete");
    until(&mut source, &mut cluster, |c| {
        !c.pods.contains_key(&ObjectKey::new("b", "q"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists_and_converges() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, None, DISCOVERY);
    let mut cluster = tokio::time::timeout(DEADLINE, source.initial())
        .await
        .expect("initial sync")
        .cluster;
    let lists = source.sync_state().lists();

    // Changes made while the watches are dropped and history is compacted: only a re-list
    // can see them.
    store.apply(namespace("c", "y")).expect("add");
    store.compact();
    store.drop_watches();
    store.apply(pod("c", "r", "10.0.0.3")).expect("add pod");
    until(&mut source, &mut cluster, |c| {
        c.namespaces.contains_key("c") && c.pods.contains_key(&ObjectKey::new("c", "r"))
    })
    .await;
    assert!(
        cluster.namespaces.contains_key("a"),
        "nothing lost in the re-list"
    );
    let relisted = tokio::time::timeout(DEADLINE, async {
        while source.sync_state().lists() <= lists {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(relisted.is_ok(), "no re-list after the compaction");
}

/// A TCP proxy in front of the test API server that can be cut (every connection dropped,
/// the port refusing) and restored on the same port: an outage as the client sees it.
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut proxy = Self {
            addr,
            upstream,
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Drops the listener and every connection (the JoinSet aborts them).
    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the proxy port");
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn client_at(url: &str) -> Client {
    let file = Kubeconfig::from_yaml(&kubeconfig(url)).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

pub(super) async fn until_true(what: &str, deadline: Duration, check: impl Fn() -> bool) {
    let waited = tokio::time::timeout(deadline, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {deadline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_watches_are_healthy_without_any_object_changing() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut proxy = Proxy::start(server.addr).await;
    let mut source = KubeSource::with_client(client_at(&proxy.url()).await, None, DISCOVERY);
    tokio::time::timeout(DEADLINE, source.initial())
        .await
        .expect("initial sync");
    let sync = source.sync_state();
    let lists = sync.lists();

    proxy.cut();
    until_true("watches failing during the outage", DEADLINE, || {
        !sync.is_healthy()
    })
    .await;
    assert!(sync.seconds_since_sync().is_some_and(|s| s >= 0.0));
    proxy.restore().await;
    // Nothing changes in the cluster: reconnecting (and the bookmarks) must be enough.
    until_true("healthy again after the outage", DEADLINE, || {
        sync.is_healthy()
    })
    .await;
    assert_eq!(sync.seconds_since_sync(), Some(0.0));
    assert_eq!(
        sync.lists(),
        lists,
        "resumed from the last version, no re-list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_version_after_an_outage_relists_at_once() {
    let store = Store::new();
    store.apply(namespace("a", "x")).expect("seed");
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut proxy = Proxy::start(server.addr).await;
    let mut source = KubeSource::with_client(client_at(&proxy.url()).await, None, DISCOVERY);
    let mut cluster = tokio::time::timeout(DEADLINE, source.initial())
        .await
        .expect("initial sync")
        .cluster;
    let sync = source.sync_state();

    proxy.cut();
    until_true("watches failing during the outage", DEADLINE, || {
        !sync.is_healthy()
    })
    .await;
    // A change the watches miss, and history compacted: resuming gets 410 Gone.
    store.apply(namespace("b", "y")).expect("add");
    store.compact();
    let errors = sync.errors();
    proxy.restore().await;
    // The first retry after the restore is at most one backoff step away (the outage was
    // short); the 410 it meets must re-list right away, not back off as from a failure.
    until(&mut source, &mut cluster, |c| {
        c.namespaces.contains_key("b")
    })
    .await;
    assert!(
        sync.errors() <= errors + 3,
        "a 410 is not a failure: {} errors after the restore",
        sync.errors() - errors
    );
    until_true("healthy after the re-list", DEADLINE, || sync.is_healthy()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_listed_then_followed_bad_ones_refused() {
    let store = Store::new();
    for object in [namespace("a", "x"), service("a", "web", &["10.96.0.1", "fd00:96::1"]), service("a", "headless", &[])] {
        store.apply(object).expect("seed");
    }
    let server = TestServer::start(store.clone()).await.expect("server");
    let mut source = KubeSource::with_client(client(&server).await, None, DISCOVERY);
    let first = tokio::time::timeout(DEADLINE, source.initial()).await.expect("initial sync");
    let mut cluster = first.cluster;
    let ips = |c: &Cluster, name: &str| c.services.get(&ObjectKey::new("a", name)).map(|s| s.cluster_ips.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(ips(&cluster, "web"), Some(vec!["10.96.0.1".to_string(), "fd00:96::1".to_string()]));
    assert_eq!(ips(&cluster, "headless"), Some(vec![]), "headless: no address");

    // Refused as the manifests source refuses it; the last good version stays (the watch
    // delivers in order: once db is seen, so was this).
    store.apply(service("a", "web", &["10.96.0.1", "10.96.0.3"])).expect("bad service");
    store.apply(service("a", "db", &["10.96.0.2"])).expect("add");
    until(&mut source, &mut cluster, |c| c.services.contains_key(&ObjectKey::new("a", "db"))).await;
    assert_eq!(ips(&cluster, "web"), Some(vec!["10.96.0.1".to_string(), "fd00:96::1".to_string()]));
    store.delete(moat_testapi::SERVICES, Some("a"), "db").expect("delete");
    until(&mut source, &mut cluster, |c| !c.services.contains_key(&ObjectKey::new("a", "db"))).await;
}
