//! Real kube-rs clients against the in-process test server.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use moat_testapi::{NAMESPACES, NODES, PODS};
use serde_json::json;

fn pod(ns: &str, name: &str, node: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_list_get_create() {
    let srv = server().await;
    let client = client(&srv).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-a", "labels": {"tenant": "a"}}}))
            .unwrap();
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    assert_eq!(
        meta.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
        "team-a"
    );

    srv.store
        .apply(pod("team-a", "web-1", "w1", "web"))
        .unwrap();
    srv.store
        .apply(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "team-a"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();

    let list = namespaces.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(srv.store.resource_version().to_string().as_str())
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let p = pods.get("web-1").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("w1"));
    assert_eq!(
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(Api::<Pod>::namespaced(client.clone(), "other")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let netpols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team-a");
    let np = netpols.get("deny-all").await.unwrap();
    assert_eq!(
        np.spec.unwrap().policy_types.unwrap(),
        vec!["Ingress".to_string()]
    );
    assert_eq!(
        Api::<NetworkPolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Label selectors on lists.
    let sel = namespaces
        .list(&ListParams::default().labels("tenant=a,!missing"))
        .await
        .unwrap();
    assert_eq!(sel.items.len(), 1);
    let sel = namespaces
        .list(&ListParams::default().labels("tenant!=a"))
        .await
        .unwrap();
    assert!(sel.items.is_empty());

    // Replace, delete.
    let mut p2 = pods.get("web-1").await.unwrap();
    p2.metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let replaced = pods
        .replace("web-1", &PostParams::default(), &p2)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.uid, p2.metadata.uid);
    let stale = pods
        .replace("web-1", &PostParams::default(), &p2)
        .await
        .unwrap_err();
    assert!(matches!(stale, kube::Error::Api(s) if s.code == 409));
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(srv.store.count(PODS), 0);
    // Deleting a namespace deletes what is in it.
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(netpols
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_creates_patches_deletes() {
    let srv = server().await;
    srv.store
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pre"}}))
        .unwrap();
    let client = client(&srv).await;
    let api: Api<Namespace> = Api::all(client.clone());
    let r = reflect(api.clone(), watcher::Config::default()).await;
    assert_eq!(r.reader.state().len(), 1);

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
    eventually("ADDED seen", || r.reader.state().len() == 2).await;

    api.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tenant": "blue"}}})),
    )
    .await
    .unwrap();
    let tenant = |r: &Reflected<Namespace>| {
        r.reader
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some("new"))
            .and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("tenant").cloned())
            })
    };
    eventually("MODIFIED seen", || tenant(&r).as_deref() == Some("blue")).await;
    api.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tenant": "red"}}})),
    )
    .await
    .unwrap();
    eventually("relabel seen", || tenant(&r).as_deref() == Some("red")).await;

    api.delete("pre", &DeleteParams::default()).await.unwrap();
    eventually("DELETED seen", || r.reader.state().len() == 1).await;
    assert_eq!(
        reflected_keys(&r.reader.state()),
        server_keys(&srv.store.objects(NAMESPACES, None))
    );

    // A selector-restricted watcher sees objects enter and leave its selection.
    let blue = reflect(
        api.clone(),
        watcher::Config::default().labels("tenant=blue"),
    )
    .await;
    assert!(blue.reader.state().is_empty());
    api.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tenant": "blue"}}})),
    )
    .await
    .unwrap();
    eventually("enters selection", || blue.reader.state().len() == 1).await;
    api.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tenant": null}}})),
    )
    .await
    .unwrap();
    eventually("leaves selection", || blue.reader.state().is_empty()).await;
    assert!(
        r.errors.lock().unwrap().is_empty(),
        "{:?}",
        r.errors.lock().unwrap()
    );

    // NetworkPolicies (networking.k8s.io/v1) through a reflector too.
    let np: Api<NetworkPolicy> = Api::all(client.clone());
    let nps = reflect(np, watcher::Config::default()).await;
    assert!(nps.reader.state().is_empty());
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-web", "namespace": "new"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
    });
    let created = Api::<NetworkPolicy>::namespaced(client.clone(), "new")
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();
    eventually("policy seen", || nps.reader.state().len() == 1).await;
    assert_eq!(nps.reader.state()[0].metadata.uid, created.metadata.uid);
    // The namespace status subresource path resolves to the namespace.
    let (c, v) = raw(
        &srv,
        "GET",
        "/api/v1/namespaces/new/status",
        "application/json",
        "",
    )
    .await;
    assert_eq!((c, v["kind"].as_str()), (200, Some("Namespace")));
    api.delete("new", &DeleteParams::default()).await.unwrap();
    eventually("policy deleted with its namespace", || {
        nps.reader.state().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_over_500_pods() {
    let srv = server().await;
    for i in 0..1203 {
        srv.store
            .apply(pod(
                &format!("ns-{}", i % 3),
                &format!("p-{i:04}"),
                "w1",
                "web",
            ))
            .unwrap();
    }
    let client = client(&srv).await;
    let api: Api<Pod> = Api::all(client.clone());
    let first = api.list(&ListParams::default().limit(500)).await.unwrap();
    assert_eq!(first.items.len(), 500);
    let token = first.metadata.continue_.clone().expect("continue token");
    // Changes between pages do not show up in the continued list.
    srv.store
        .apply(pod("ns-0", "p-0000-late", "w1", "web"))
        .unwrap();
    let mut all = first.items.clone();
    let mut next = Some(token);
    while let Some(token) = next {
        let page = api
            .list(&ListParams::default().limit(500).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        all.extend(page.items);
        next = page.metadata.continue_.filter(|t| !t.is_empty());
    }
    assert_eq!(all.len(), 1203);

    // An expired continue token is a 410.
    let again = api.list(&ListParams::default().limit(500)).await.unwrap();
    post(&srv, "/testapi/compact").await;
    let err = api
        .list(
            &ListParams::default()
                .limit(500)
                .continue_token(again.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );

    // The watcher pages with limit=500 and ends up with everything.
    let r = reflect(api, watcher::Config::default()).await;
    assert_eq!(r.reader.state().len(), 1204);
    let stats = stats(&srv).await;
    assert!(stats["requests"]["list pods"].as_u64().unwrap() >= 3 + 3);
}

async fn stats(srv: &moat_testapi::TestServer) -> serde_json::Value {
    let (code, v) = raw(srv, "GET", "/testapi/stats", "application/json", "").await;
    assert_eq!(code, 200);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_forces_relist_and_converges() {
    let srv = server().await;
    for i in 0..20 {
        srv.store
            .apply(pod("a", &format!("p{i}"), "w1", "web"))
            .unwrap();
    }
    let client = client(&srv).await;
    let api: Api<Pod> = Api::all(client.clone());
    // Without bookmarks: a bookmark tick between the compaction and the drop would move the
    // watcher's version up to the compacted one, and it would resume without a 410.
    let r = reflect(api, watcher::Config::default().disable_bookmarks()).await;
    let lists_before = stats(&srv).await["requests"]["list pods"].as_u64().unwrap();
    // The reflector is ready after the initial list; its watch starts just after.
    eventually("watch open", || srv.store.open_watches() == 1).await;

    // Compact and drop watches at once: the watcher resumes from a version that
    // is no longer retained, gets 410 Expired, re-lists and converges.
    let v = post(&srv, "/testapi/compact?dropWatches=true").await;
    assert_eq!(v["droppedWatches"], 1);
    // Change nothing until the 410: the dropped stream closes asynchronously, and an event
    // it still delivered would move the watcher past the compaction (no 410 at all).
    eventually("410 seen by the watcher", || {
        r.errors.lock().unwrap().iter().any(|e| e.contains("410"))
    })
    .await;
    for i in 0..5 {
        srv.store.delete(PODS, Some("a"), &format!("p{i}")).unwrap();
        srv.store
            .apply(pod("b", &format!("q{i}"), "w2", "db"))
            .unwrap();
    }
    eventually("reflector converged", || {
        reflected_keys(&r.reader.state()) == server_keys(&srv.store.objects(PODS, None))
    })
    .await;
    let lists_after = stats(&srv).await["requests"]["list pods"].as_u64().unwrap();
    assert!(lists_after > lists_before, "watcher re-listed");

    // A watch resumed from an old version over raw HTTP gets an ERROR event with a 410 Status.
    let (code, body) = raw(
        &srv,
        "GET",
        "/api/v1/pods?watch=1&resourceVersion=2",
        "application/json",
        "",
    )
    .await;
    assert_eq!(code, 200);
    let text = body
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    assert!(
        text.contains("\"ERROR\"") && text.contains("410") && text.contains("Expired"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_watches_reconnects_and_converges() {
    let srv = server().await;
    let client = client(&srv).await;
    let api: Api<Node> = Api::all(client.clone());
    let r = reflect(api, watcher::Config::default()).await;
    eventually("watch open", || srv.store.open_watches() == 1).await;
    let started = stats(&srv).await["watchesStarted"].as_u64().unwrap();
    post(&srv, "/testapi/drop-watches").await;
    for i in 0..3 {
        srv.store
            .apply(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")}}),
            )
            .unwrap();
    }
    eventually("reflector converged", || {
        reflected_keys(&r.reader.state()) == server_keys(&srv.store.objects(NODES, None))
    })
    .await;
    eventually("re-watched", || srv.store.open_watches() == 1).await;
    let again = stats(&srv).await["watchesStarted"].as_u64().unwrap();
    assert!(again > started, "watcher reconnected");
    // Resumed from its version: no error, no relist needed.
    assert!(
        r.errors.lock().unwrap().is_empty(),
        "{:?}",
        r.errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher() {
    let srv = server().await;
    for i in 0..7 {
        srv.store
            .apply(pod("s", &format!("p{i}"), "w1", "web"))
            .unwrap();
    }
    let client = client(&srv).await;
    let r = reflect(
        Api::<Pod>::all(client),
        watcher::Config::default().streaming_lists(),
    )
    .await;
    assert_eq!(r.reader.state().len(), 7);
    srv.store.apply(pod("s", "p9", "w1", "web")).unwrap();
    eventually("ADDED after streaming list", || r.reader.state().len() == 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_selectors() {
    let srv = server().await;
    srv.store.apply(pod("a", "on-w1", "w1", "web")).unwrap();
    srv.store.apply(pod("a", "on-w2", "w2", "web")).unwrap();
    srv.store.apply(pod("b", "also-w1", "w1", "db")).unwrap();
    for n in ["w1", "w2"] {
        srv.store
            .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
            .unwrap();
    }
    let client = client(&srv).await;
    let pods: Api<Pod> = Api::all(client.clone());
    let on_w1 = pods
        .list(&ListParams::default().fields("spec.nodeName=w1"))
        .await
        .unwrap();
    assert_eq!(on_w1.items.len(), 2);
    let nodes: Api<Node> = Api::all(client.clone());
    let mine = nodes
        .list(&ListParams::default().fields("metadata.name=w2"))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);

    // A watcher restricted to this node's pods, like the agent's.
    let r = reflect(
        pods.clone(),
        watcher::Config::default().fields("spec.nodeName=w1"),
    )
    .await;
    assert_eq!(r.reader.state().len(), 2);
    srv.store.apply(pod("a", "late-w1", "w1", "web")).unwrap();
    srv.store.apply(pod("a", "late-w2", "w2", "web")).unwrap();
    eventually("only w1 pods", || r.reader.state().len() == 3).await;
    let node = reflect(nodes, watcher::Config::default().fields("metadata.name=w1")).await;
    assert_eq!(node.reader.state().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors() {
    let srv = server().await;
    let client = client(&srv).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not a Status: {other:?}"),
    };
    assert_eq!(
        code(pods.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let p: Pod = serde_json::from_value(pod("a", "x", "w1", "web")).unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(
        code(pods.create(&PostParams::default(), &p).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        code(
            pods.list(&ListParams::default().labels("a b c"))
                .await
                .unwrap_err()
        )
        .0,
        400
    );
    assert_eq!(
        code(
            pods.list(&ListParams::default().fields("spec.bogus=1"))
                .await
                .unwrap_err()
        )
        .0,
        400
    );
    assert_eq!(
        code(
            pods.delete("nope", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
    assert_eq!(
        code(
            nodes
                .replace("n", &PostParams::default(), &n)
                .await
                .unwrap_err()
        )
        .0,
        404
    );

    let (c, v) = raw(
        &srv,
        "POST",
        "/api/v1/namespaces/a/pods",
        "application/json",
        "{not json",
    )
    .await;
    assert_eq!(
        (c, v["kind"].as_str(), v["code"].as_u64()),
        (400, Some("Status"), Some(400))
    );
    let (c, _) = raw(
        &srv,
        "POST",
        "/api/v1/namespaces/a/pods",
        "application/json",
        r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"q"}}"#,
    )
    .await;
    assert_eq!(c, 400);
    let (c, v) = raw(
        &srv,
        "PATCH",
        "/api/v1/namespaces/a/pods/x",
        "application/json-patch+json",
        "[]",
    )
    .await;
    assert_eq!(
        (c, v["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (c, v) = raw(&srv, "GET", "/api/v1/widgets", "application/json", "").await;
    assert_eq!((c, v["kind"].as_str()), (404, Some("Status")));
    let (c, _) = raw(
        &srv,
        "GET",
        "/api/v1/pods?watch=1&resourceVersion=abc",
        "application/json",
        "",
    )
    .await;
    assert_eq!(c, 400);
    let (c, _) = raw(&srv, "GET", "/api/v1/pods?limit=-3", "application/json", "").await;
    assert_eq!(c, 400);
    let (c, v) = raw(
        &srv,
        "GET",
        "/api/v1/pods?continue=zz",
        "application/json",
        "",
    )
    .await;
    assert_eq!((c, v["kind"].as_str()), (400, Some("Status")));

    // Discovery documents.
    let (c, v) = raw(&srv, "GET", "/version", "application/json", "").await;
    assert_eq!((c, v["major"].as_str()), (200, Some("1")));
    let (_, v) = raw(&srv, "GET", "/apis", "application/json", "").await;
    assert_eq!(v["groups"][0]["name"], "networking.k8s.io");
    let (_, v) = raw(&srv, "GET", "/api/v1", "application/json", "").await;
    // namespaces, nodes, pods, events, services
    assert_eq!(v["resources"].as_array().unwrap().len(), 5);
    let (c, v) = raw(&srv, "GET", "/healthz", "application/json", "").await;
    assert_eq!((c, v.as_str()), (200, Some("ok")));
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_replays_history_bookmarks_and_times_out() {
    let srv = server().await;
    let from = srv.store.resource_version();
    srv.store.apply(pod("a", "p1", "w1", "web")).unwrap();
    srv.store.apply(pod("a", "p1", "w1", "db")).unwrap();
    srv.store.delete(PODS, Some("a"), "p1").unwrap();
    let path = format!("/api/v1/namespaces/a/pods?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=2");
    let (code, body) = raw(&srv, "GET", &path, "application/json", "").await;
    assert_eq!(code, 200);
    let text = body.as_str().unwrap().to_string();
    let types: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(&types[..3], ["ADDED", "MODIFIED", "DELETED"], "{text}");
    assert!(
        types[3..].iter().all(|t| t == "BOOKMARK") && types.len() >= 4,
        "{text}"
    );
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["object"]["metadata"]["resourceVersion"],
        srv.store.resource_version().to_string()
    );
}
