//! `moat agent --kubeconfig` against `moat-test-apiserver`, enforcing over lab pods: adds and
//! relabels arrive through the watch, and losing the API server changes nothing.

use std::time::{Duration, Instant};

use moat_integration::kube::{find, lab_objects, write_list, ApiServer, KubeAgent};
use moat_integration::{
    documents, eventually, moat_bin, namespace_yaml, pod_yaml, wait_verdict, Family, Lab, Manifests, UpOptions, Verdict,
};

const CONVERGE: Duration = Duration::from_secs(10);

/// x and y are tenant a, z tenant b; every pod serves TCP 80.
fn lab(manifests: &Manifests) -> Lab {
    let cluster = documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        namespace_yaml("y", &[("tenant", "a")]),
        namespace_yaml("z", &[("tenant", "b")]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]),
        pod_yaml("x", "q", &[], &[(80, "TCP")]),
        pod_yaml("y", "s", &[], &[(80, "TCP")]),
        pod_yaml("z", "r", &[], &[(80, "TCP")]),
    ]);
    Lab::up(&[manifests.write("cluster.yaml", &cluster)], UpOptions { no_agent: true, ..UpOptions::default() })
}

#[test]
fn pod_added_is_enforced_and_relabel_cuts_live_flows() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let objects = lab_objects(&lab);
    // The API server does not know x/q yet.
    let without_q: Vec<_> = objects.iter().filter(|o| o["metadata"]["name"] != "q").cloned().collect();
    let state = manifests.dir().join("state.json");
    write_list(&state, &without_q);
    let server = ApiServer::start(&[&state], 1);
    let _agent = KubeAgent::start(&lab, &server);

    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "cross-tenant");
    assert_eq!(lab.probe("x/p", "y/s", "80/TCP"), Verdict::Allowed, "same tenant");
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Denied, "a pod the cluster does not know is pending");

    server.apply(find(&objects, "Pod", "x/q"));
    let took = wait_verdict("x/q -> x/p once the pod is known", Verdict::Allowed, CONVERGE, || lab.probe("x/q", "x/p", "80/TCP"));
    eprintln!("pod added → enforced in {took:?}");
    assert_eq!(lab.probe("x/q", "z/r", "80/TCP"), Verdict::Denied, "the new pod is in its tenant's floor");

    let mut held = lab.hold("x/p", "y/s", 80, Family::V4);
    held.ping().expect("same tenant: the held connection works");
    let mut relabelled = find(&objects, "Namespace", "y").clone();
    relabelled["metadata"]["labels"]["tenant"] = "b".into();
    server.apply(&relabelled);
    let applied = Instant::now();
    loop {
        let sent = applied.elapsed();
        match held.ping() {
            Ok(()) => assert!(sent < Duration::from_secs(3), "the held connection still works {sent:?} after the relabel"),
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.probe("x/p", "y/s", "80/TCP"), Verdict::Denied, "new x -> y after the relabel");
    assert_eq!(lab.probe("z/r", "y/s", "80/TCP"), Verdict::Allowed, "y is tenant b now");
}

#[test]
fn api_server_lost_keeps_enforcing_then_a_newer_state_converges() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let objects = lab_objects(&lab);
    let state = manifests.dir().join("state.json");
    write_list(&state, &objects);
    let mut server = ApiServer::start(&[&state], 1);
    let mut agent = KubeAgent::start(&lab, &server);
    let old_rv = server.resource_version();

    server.kill();
    // Long enough for the watches to fail and back off a few times.
    agent.wait_log("a watch error", Duration::from_secs(30), |line| {
        line["message"].as_str().is_some_and(|m| m.starts_with("watch failed"))
    });
    for _ in 0..3 {
        assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "cross-tenant without an API server");
        assert_eq!(lab.probe("x/p", "y/s", "80/TCP"), Verdict::Allowed, "same tenant without an API server");
    }
    assert!(agent.is_running(), "the agent survives losing the API server");
    let stale = eventually(Duration::from_secs(30), || staleness(&lab).filter(|s| *s > 1.0));
    assert!(stale.is_some(), "moat status reports the growing staleness: {:?}", staleness(&lab));

    // Back, with z moved to tenant a and a newer resourceVersion.
    let mut changed = objects.clone();
    for object in changed.iter_mut() {
        if object["kind"] == "Namespace" && object["metadata"]["name"] == "z" {
            object["metadata"]["labels"]["tenant"] = "a".into();
        }
    }
    write_list(&state, &changed);
    server.restart(&[&state], old_rv + 1000);
    wait_verdict("x/p -> z/r after the API server is back", Verdict::Allowed, Duration::from_secs(60), || {
        lab.probe("x/p", "z/r", "80/TCP")
    });
    let current = eventually(Duration::from_secs(30), || staleness(&lab).filter(|s| *s < 1.0));
    assert!(current.is_some(), "staleness drops once the source is current: {:?}", staleness(&lab));
}

/// `staleness_seconds` from `moat status` on the kube agent's admin socket.
fn staleness(lab: &Lab) -> Option<f64> {
    let socket = lab.run_dir().join("kube-agent.sock");
    let output = std::process::Command::new(moat_bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .args(["-o", "json"])
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    status["staleness_seconds"].as_f64()
}

#[test]
fn network_policy_added_and_removed_through_the_api_server() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let objects = lab_objects(&lab);
    let state = manifests.dir().join("state.json");
    write_list(&state, &objects);
    let server = ApiServer::start(&[&state], 1);
    let _agent = KubeAgent::start(&lab, &server);
    assert_eq!(lab.probe("y/s", "x/p", "80/TCP"), Verdict::Allowed, "same tenant, no policy");

    // x/p accepts ingress only from its own namespace.
    let policy = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "same-namespace-only", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    });
    server.apply(&policy);
    let took = wait_verdict("y/s -> x/p once the policy is known", Verdict::Denied, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));
    eprintln!("policy added → enforced in {took:?}");
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Allowed, "the policy allows its own namespace");

    server.delete(&policy);
    let took = wait_verdict("y/s -> x/p once the policy is gone", Verdict::Allowed, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));
    eprintln!("policy removed → lifted in {took:?}");
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "the tenant floor is still there");
}

#[test]
fn cluster_network_policy_arrives_with_its_crd_and_goes_with_it() {
    let manifests = Manifests::new();
    let lab = lab(&manifests);
    let state = manifests.dir().join("state.json");
    write_list(&state, &lab_objects(&lab));
    let server = ApiServer::start(&[&state], 1);
    // The agent asks for the CRD every 200 ms (the interval of API discovery).
    let _agent = KubeAgent::start_with(&lab, &server, "apiDiscoveryIntervalMs: 200\n");
    assert_eq!(lab.probe("y/s", "x/p", "80/TCP"), Verdict::Allowed, "same tenant, no policy");

    let (code, body) = server.request("POST", "/testapi/crds/clusternetworkpolicies.policy.networking.k8s.io", None);
    assert_eq!(code, 200, "{body}");
    let policy = |action: &str| {
        serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "no-port-80"},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, "ingress": [
                {"name": "port-80", "action": action, "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}
            ]}
        })
    };
    server.apply(&policy("Deny"));
    let took = wait_verdict("y/s -> x/p once the admin's Deny is known", Verdict::Denied, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));
    eprintln!("ClusterNetworkPolicy added (CRD installed just before) → enforced in {took:?}");
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Denied, "Admin tier: in one namespace too");

    // A rule's action changed at runtime: Pass hands the flow back to NetworkPolicy (none here).
    server.apply(&policy("Pass"));
    wait_verdict("y/s -> x/p once the rule passes", Verdict::Allowed, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));
    server.apply(&policy("Deny"));
    wait_verdict("y/s -> x/p denied again", Verdict::Denied, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));

    // The CRD removed: its policies go with it.
    let (code, body) = server.request("DELETE", "/testapi/crds/clusternetworkpolicies.policy.networking.k8s.io", None);
    assert_eq!(code, 200, "{body}");
    wait_verdict("y/s -> x/p once the CRD is gone", Verdict::Allowed, CONVERGE, || lab.probe("y/s", "x/p", "80/TCP"));
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "the tenant floor is still there");
}
