//! Policy objects moat does not enforce are never ignored silently: the real agent warns,
//! counts them in `moat_unenforced_policies` and lists them in `moat status`, from manifest
//! files and from the API server (where policy CRDs may appear later).

use std::process::Command;
use std::time::Duration;

use moat_integration::kube::{lab_objects, write_list, ApiServer, KubeAgent};
use moat_integration::{documents, eventually, http_get, moat_bin, namespace_yaml, pod_yaml, Lab, Manifests, UpOptions, Verdict};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(20);

/// The older API version of the admin's policies: moat enforces `v1alpha2` only.
const ANP: &str = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata:\n  name: deny-beta\nspec:\n  priority: 10\n  subject:\n    namespaces: {}\n  egress:\n  - action: Deny\n    to:\n    - nodes: {}\n";
const CALICO: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: default-deny\nspec:\n  selector: all()\n";

fn lab(manifests: &Manifests, options: UpOptions) -> Lab {
    let cluster = documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        namespace_yaml("y", &[("tenant", "b")]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]),
        pod_yaml("y", "q", &[], &[(80, "TCP")]),
    ]);
    Lab::up(&[manifests.write("cluster.yaml", &cluster)], options)
}

/// The `unenforced_policies` lines of a status, once `done` holds for them.
fn wait_lines(what: &str, status: impl Fn() -> Value, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let found = eventually(CONVERGE, || {
        let status = status();
        let unenforced = &status["unenforced_policies"];
        let lines: Vec<String> = unenforced["lines"].as_array()?.iter().filter_map(|l| l.as_str().map(String::from)).collect();
        (unenforced["reported"] == true && done(&lines)).then_some(lines)
    });
    found.unwrap_or_else(|| panic!("{what}: not within {CONVERGE:?}; status: {}", status()))
}

fn metrics(status: &Value) -> String {
    let url = status["metrics_url"].as_str().unwrap_or_else(|| panic!("no metrics URL: {status}"));
    let address = url.trim_start_matches("http://").trim_end_matches("/metrics");
    let (code, body) = http_get(address, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn manifests_source_reports_policies_it_does_not_enforce() {
    moat_integration::require_root();
    let manifests = Manifests::new();
    let lab = lab(&manifests, UpOptions::default());
    assert!(wait_lines("nothing to report at first", || lab.agent_status(), |l| l.is_empty()).is_empty());

    let file = lab.manifests_dir().join("admin-policies.yaml");
    std::fs::write(&file, format!("{ANP}---\n{CALICO}")).expect("writing the policies");
    let lines = wait_lines("both policies reported", || lab.agent_status(), |l| l.len() == 2);
    assert_eq!(
        lines,
        vec![
            "AdminNetworkPolicy deny-beta (policy.networking.k8s.io/v1alpha1)",
            "GlobalNetworkPolicy default-deny (projectcalico.org/v3)"
        ]
    );
    let log = lab.wait_log("NOT enforce", CONVERGE).unwrap_or_else(|e| panic!("no warning: {e}"));
    assert!(log.contains("deny-beta") && log.contains("\"WARN\""), "{log}");
    let body = metrics(&lab.agent_status());
    assert!(body.contains(r#"moat_unenforced_policies{group="policy.networking.k8s.io",kind="AdminNetworkPolicy"} 1"#), "{body}");
    assert!(body.contains(r#"moat_unenforced_policies{group="projectcalico.org",kind="GlobalNetworkPolicy"} 1"#), "{body}");
    let text = Command::new(moat_bin()).args(["status", "--lab", lab.name()]).output().expect("moat status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("NOT ENFORCED by moat (2)") && text.contains("deny-beta"), "{text}");
    // Not enforced: the floor decides as before.
    assert_eq!(lab.probe("x/p", "y/q", "80/TCP"), Verdict::Denied, "cross-tenant, by the floor");

    std::fs::remove_file(&file).expect("removing the policies");
    wait_lines("nothing reported once they are gone", || lab.agent_status(), |l| l.is_empty());
    lab.wait_log("no policy objects moat does not enforce remain", CONVERGE).unwrap_or_else(|e| panic!("{e}"));
    let body = metrics(&lab.agent_status());
    assert!(body.contains(r#"moat_unenforced_policies{group="policy.networking.k8s.io",kind="AdminNetworkPolicy"} 0"#), "{body}");
}

#[test]
fn kube_source_notices_policy_crds_when_they_appear() {
    moat_integration::require_root();
    let manifests = Manifests::new();
    let lab = lab(&manifests, UpOptions { no_agent: true, ..UpOptions::default() });
    let state = manifests.dir().join("state.json");
    write_list(&state, &lab_objects(&lab));
    let server = ApiServer::start(&[&state], 1);
    let agent = KubeAgent::start_with(&lab, &server, "apiDiscoveryIntervalMs: 200\n");
    let socket = lab.run_dir().join("kube-agent.sock");
    let status = || {
        let output = Command::new(moat_bin()).arg("status").arg("--socket").arg(&socket).args(["-o", "json"]).output().expect("moat status");
        serde_json::from_slice::<Value>(&output.stdout).unwrap_or(Value::Null)
    };
    // Without the CRD the agent runs as ever and has nothing to report.
    assert!(wait_lines("nothing to report without the CRD", status, |l| l.is_empty()).is_empty());
    assert_eq!(lab.probe("x/p", "y/q", "80/TCP"), Verdict::Denied, "the floor is enforced");

    let (code, body) = server.request("POST", "/testapi/crds/clusternetworkpolicies.policy.networking.k8s.io", None);
    assert_eq!(code, 200, "{body}");
    let cnp = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-beta"},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}
    });
    server.apply(&cnp);
    agent.wait_log("the ClusterNetworkPolicy watched", CONVERGE, |line| line.to_string().contains("served: watching it"));

    // Another vendor's policy CRD: its objects are reported, the enforced kind never is.
    let (code, body) = server.request("POST", "/testapi/crds/globalnetworkpolicies.crd.projectcalico.org", None);
    assert_eq!(code, 200, "{body}");
    server.apply(&json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "deny-beta"}}));
    let lines = wait_lines("the other vendor's policy reported once its CRD appears", status, |l| !l.is_empty());
    assert_eq!(lines, vec!["GlobalNetworkPolicy deny-beta (crd.projectcalico.org/v1)"]);
    agent.wait_log("a warning naming it", CONVERGE, |line| {
        line["level"] == "WARN" && line.to_string().contains("NOT enforce") && line.to_string().contains("deny-beta")
    });
    assert!(metrics(&status()).contains(r#"moat_unenforced_policies{group="crd.projectcalico.org",kind="GlobalNetworkPolicy"} 1"#));

    let (code, body) = server.request("DELETE", "/testapi/crds/globalnetworkpolicies.crd.projectcalico.org", None);
    assert_eq!(code, 200, "{body}");
    wait_lines("nothing reported once the CRD is gone", status, |l| l.is_empty());
    agent.wait_log("the all-clear", CONVERGE, |line| line.to_string().contains("no policy objects moat does not enforce remain"));
    assert_eq!(lab.probe("x/p", "y/q", "80/TCP"), Verdict::Denied, "still enforcing");
}

#[test]
fn explain_never_calls_a_verdict_complete_while_unenforced_policies_exist() {
    let manifests = Manifests::new();
    let cluster = documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]).replace("spec:", "status:\n  podIP: 10.9.0.1\nspec:"),
        pod_yaml("x", "q", &[], &[(80, "TCP")]).replace("spec:", "status:\n  podIP: 10.9.0.2\nspec:"),
    ]);
    manifests.write("cluster.yaml", &cluster);
    let explain = |format: &str| {
        let output = Command::new(moat_bin())
            .arg("explain")
            .arg("-f")
            .arg(manifests.dir())
            .args(["--from", "x/p", "--to", "x/q", "--port", "80", "-o", format])
            .output()
            .expect("moat explain");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let clean: Value = serde_json::from_str(&explain("json")).expect("JSON");
    assert_eq!((clean["verdict"].as_str(), clean["complete"].as_bool()), (Some("allow"), Some(true)), "{clean}");

    manifests.write("anp.yaml", ANP);
    let text = explain("text");
    assert!(text.starts_with("WARNING: moat does not enforce these policy objects"), "{text}");
    assert!(text.contains("AdminNetworkPolicy deny-beta (policy.networking.k8s.io/v1alpha1)"), "{text}");
    assert!(text.contains("x/p -> x/q 80/TCP: ALLOW (INCOMPLETE"), "{text}");
    let json: Value = serde_json::from_str(&explain("json")).expect("JSON");
    assert_eq!(json["complete"], false, "{json}");
    assert_eq!(json["unenforced"][0], "AdminNetworkPolicy deny-beta (policy.networking.k8s.io/v1alpha1)", "{json}");
}
