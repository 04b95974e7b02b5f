//! Node profiles, `node.foreign-tenant`: on a node labelled for tenant alpha, a running pod of
//! another tenant is reported (pod, namespace, tenant, the node label as evidence) and, in
//! block mode (the default), cut off both ways on the real datapath — even from its own
//! tenant. Detect mode reports and leaves traffic alone. With the API server, relabelling the
//! Node live cuts the pod's open connection, and removing the label restores its traffic.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moat_integration::kube::{lab_objects, write_list, ApiServer, KubeAgent};
use moat_integration::observe::Observer;
use moat_integration::{documents, eventually, namespace_yaml, pod_yaml, wait_verdict, Family, Lab, Manifests, UpOptions, Verdict};
use serde_json::{json, Value};

const LABEL: &str = "node-restriction.kubernetes.io/tenant";
const ID: &str = "node.foreign-tenant";
const DEADLINE: Duration = Duration::from_secs(20);

/// alpha (a1/p, a1/q) and beta (b1/r, b1/s); every pod serves 80/TCP.
fn cluster() -> String {
    let port: &[(u16, &str)] = &[(80, "TCP")];
    documents(&[
        namespace_yaml("a1", &[("tenant", "alpha")]),
        namespace_yaml("b1", &[("tenant", "beta")]),
        pod_yaml("a1", "p", &[], port),
        pod_yaml("a1", "q", &[], port),
        pod_yaml("b1", "r", &[], port),
        pod_yaml("b1", "s", &[], port),
    ])
}

/// The Node of this lab, reserved for `tenant` (`kubectl get node -o yaml` style).
fn node(tenant: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": "n1"});
    if let Some(tenant) = tenant {
        labels[LABEL] = tenant.into();
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": labels}, "spec": {}, "status": {}})
}

/// The mode, and floor exceptions between alpha and beta: whatever denies between them here
/// is the node profile, not the tenant floor.
fn config(manifests: &Manifests, mode: &str) -> PathBuf {
    let text = format!(
        "allowedTenantPairs:\n  - {{from: alpha, to: beta}}\n  - {{from: beta, to: alpha}}\nguard:\n  detections:\n    {ID}: {mode}\n"
    );
    manifests.write("moat.yaml", &text)
}

/// A lab whose manifests hold a Node reserved for alpha.
fn lab_reserved_for_alpha(manifests: &Manifests, mode: &str) -> (Lab, PathBuf) {
    let files = [manifests.write("cluster.yaml", &cluster()), manifests.write("node.json", &node(Some("alpha")).to_string())];
    let config = config(manifests, mode);
    let lab = Lab::up(&files, UpOptions { config: Some(config.clone()), ..UpOptions::default() });
    (lab, config)
}

/// The agent log's `node.foreign-tenant` detections.
fn detections(lines: &[Value]) -> Vec<Value> {
    lines.iter().filter(|line| line["message"] == "detection" && line["id"] == ID).cloned().collect()
}

fn assert_names(detection: &Value, pod: &str, action: &str, mode: &str) {
    assert_eq!(detection["namespace"], "b1", "{detection}");
    assert_eq!(detection["pod"], pod, "{detection}");
    assert_eq!(detection["tenant"], "beta", "{detection}");
    assert_eq!(detection["action"], action, "{detection}");
    assert_eq!(detection["mode"], mode, "{detection}");
    assert_eq!(detection["severity"], "high", "{detection}");
    assert_eq!(detection["evidence"], format!("node label {LABEL}=alpha"), "{detection}");
}

/// Waits until the agent log holds a detection for each of `pods`; returns them all.
fn wait_detections(lab: &Lab, pods: &[&str]) -> Vec<Value> {
    let found = eventually(DEADLINE, || {
        let seen = detections(&lab.agent_log_json());
        pods.iter().all(|pod| seen.iter().any(|d| d["pod"] == *pod)).then_some(seen)
    });
    found.unwrap_or_else(|| panic!("no {ID} detection for each of {pods:?}; agent log:\n{}", lab.agent_log()))
}

#[test]
fn block_mode_cuts_a_foreign_pod_off_both_ways() {
    let manifests = Manifests::new();
    let (lab, config) = lab_reserved_for_alpha(&manifests, "block");

    assert_eq!(lab.probe("a1/p", "a1/q", "80/TCP"), Verdict::Allowed, "alpha at home");
    assert_eq!(lab.probe("b1/r", "b1/s", "80/TCP"), Verdict::Denied, "beta to beta, which the floor allows");
    assert_eq!(lab.probe_family("b1/s", "b1/r", "80/TCP", Family::V6), Verdict::Denied, "and over IPv6");
    assert_eq!(lab.probe("a1/p", "b1/r", "80/TCP"), Verdict::Denied, "into the foreign pod (the pair allows it)");
    assert_eq!(lab.probe("b1/r", "a1/p", "80/TCP"), Verdict::Denied, "out of the foreign pod (the pair allows it)");

    for detection in wait_detections(&lab, &["r", "s"]) {
        let pod = detection["pod"].as_str().unwrap_or_default().to_string();
        assert_names(&detection, &pod, "blocked", "block");
    }
    let deny = lab.wait_log_line(
        |line| {
            serde_json::from_str::<Value>(line)
                .map(|e| e["message"] == "deny" && e["rule"] == ID && e["src_pod"] == "r" && e["dst_pod"] == "s")
                .unwrap_or(false)
        },
        DEADLINE,
    );
    assert!(deny.is_ok(), "no deny event b1/r -> b1/s with rule {ID}; tail:\n{}", deny.unwrap_err());

    let status = lab_status(&lab);
    let foreign = &status["detections"]["foreign_tenant"];
    assert_eq!(foreign["node_profile"], format!("{LABEL}=alpha"), "{status}");
    assert_eq!(foreign["pods"], json!(["b1/r (beta)", "b1/s (beta)"]), "{status}");

    // Explain, over the lab's own manifests (with addresses and the Node), says the same.
    let explained = explain(&lab, &config, "b1/r", "b1/s");
    assert_eq!(explained["verdict"], "deny", "{explained}");
    let reasons = explained["reasons"].to_string();
    assert!(reasons.contains(ID) && reasons.contains("b1/r is tenant beta on a node reserved for tenant alpha"), "{explained}");
    assert_eq!(explain(&lab, &config, "a1/p", "a1/q")["verdict"], "allow");

    // A reconcile that changes something else reports nothing again.
    let more = documents(&[cluster(), pod_yaml("a1", "t", &[], &[(80, "TCP")])]);
    lab.apply(&[manifests.write("more.yaml", &more), manifests.write("node.json", &node(Some("alpha")).to_string())]);
    wait_verdict("a1/t once it is known", Verdict::Allowed, DEADLINE, || lab.probe("a1/t", "a1/p", "80/TCP"));
    let seen = detections(&lab.agent_log_json());
    assert_eq!(seen.iter().filter(|d| d["pod"] == "r").count(), 1, "b1/r reported once: {seen:?}");
}

#[test]
fn detect_mode_reports_and_leaves_traffic_alone() {
    let manifests = Manifests::new();
    let (lab, _) = lab_reserved_for_alpha(&manifests, "detect");
    for detection in wait_detections(&lab, &["r", "s"]) {
        let pod = detection["pod"].as_str().unwrap_or_default().to_string();
        assert_names(&detection, &pod, "detected", "detect");
    }
    assert_eq!(lab.probe("b1/r", "b1/s", "80/TCP"), Verdict::Allowed);
    assert_eq!(lab.probe("a1/p", "b1/r", "80/TCP"), Verdict::Allowed);
    assert_eq!(lab.probe("b1/r", "a1/p", "80/TCP"), Verdict::Allowed);
    assert!(!lab.agent_log().contains(&format!("\"rule\":\"{ID}\"")), "nothing denied:\n{}", lab.agent_log());
}

#[test]
fn kube_node_relabel_cuts_a_pod_off_and_unlabelling_restores_it() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[manifests.write("cluster.yaml", &cluster())], UpOptions { no_agent: true, ..UpOptions::default() });
    let mut objects = lab_objects(&lab);
    objects.push(node(None));
    let state = manifests.dir().join("state.json");
    write_list(&state, &objects);
    let server = ApiServer::start(&[&state], 1);
    let agent = KubeAgent::start_with(&lab, &server, "nodeName: n1\n");
    // The observer is listening once it has seen an event: the tenant floor's deny.
    let observer = Observer::start(&[OsStr::new("--socket"), lab.run_dir().join("kube-agent.sock").as_os_str()]);
    let listening = eventually(DEADLINE, || {
        lab.probe("a1/p", "b1/r", "80/TCP");
        observer.events().iter().any(|e| e["type"] == "flow").then_some(())
    });
    assert!(listening.is_some(), "moat observe saw no event");

    let mut held = lab.hold("b1/r", "b1/s", 80, Family::V4);
    held.ping().expect("beta to beta on an unreserved node");

    server.apply(&node(Some("alpha")));
    let relabelled = Instant::now();
    loop {
        let sent = relabelled.elapsed();
        match held.ping() {
            Ok(()) => assert!(sent < Duration::from_secs(5), "the held connection still works {sent:?} after the relabel"),
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("node relabelled → open connection cut in {:?}", relabelled.elapsed());
    assert_eq!(lab.probe("b1/r", "b1/s", "80/TCP"), Verdict::Denied, "new connections too");
    assert_eq!(lab.probe("a1/p", "a1/q", "80/TCP"), Verdict::Allowed, "alpha is at home");

    let logged = agent.wait_log("the detection", DEADLINE, |line| line["message"] == "detection" && line["id"] == ID && line["pod"] == "r");
    assert_names(&logged, "r", "blocked", "block");
    let observed = eventually(DEADLINE, || observer.events().into_iter().find(|e| e["id"] == ID && e["pod"] == "r"));
    let observed = observed.unwrap_or_else(|| panic!("moat observe saw no {ID} detection for b1/r"));
    assert_eq!((observed["type"].as_str(), observed["namespace"].as_str(), observed["tenant"].as_str()), (Some("detection"), Some("b1"), Some("beta")));

    server.apply(&node(None));
    wait_verdict("b1/r -> b1/s once the label is gone", Verdict::Allowed, DEADLINE, || lab.probe("b1/r", "b1/s", "80/TCP"));
    let mut again = lab.hold("b1/r", "b1/s", 80, Family::V6);
    again.ping().expect("a new connection after the label is gone works");
}

fn lab_status(lab: &Lab) -> Value {
    let output = Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("moat status");
    assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("moat status prints JSON")
}

fn explain(lab: &Lab, config: &Path, from: &str, to: &str) -> Value {
    let output = Command::new(lab.moat())
        .arg("explain")
        .arg("-f")
        .arg(lab.manifests_dir())
        .arg("--config")
        .arg(config)
        .args(["--from", from, "--to", to, "--port", "80", "-o", "json"])
        .output()
        .expect("moat explain");
    assert!(output.status.success(), "moat explain: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("moat explain prints JSON")
}
