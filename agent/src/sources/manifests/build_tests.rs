use std::net::IpAddr;

use super::read_tests::{testdata, write};
use super::*;
use crate::model::{ContainerPort, ObjectKey, Protocol};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn port(name: Option<&str>, port: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort {
        name: name.map(String::from),
        port,
        protocol,
    }
}

/// Loads `text` from a file named `name`; the error as text.
fn load_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    load(&[write(dir.path(), name, text)])
        .unwrap_err()
        .to_string()
}

fn pod_yaml(status: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team-a\nspec:\n  containers:\n  - name: web\n    image: x\n{ports}status:\n{status}"
    )
}

#[test]
fn kubectl_pod_list_maps_to_the_model() {
    let loaded = load(&[testdata("pods-list.yaml")]).unwrap();
    let pods = &loaded.cluster.pods;
    assert_eq!(pods.len(), 3, "{:?}", pods.keys());

    let web = &pods[&ObjectKey::new("team-a", "web-7c9d8f6b5-x2x9k")];
    assert_eq!(web.ips, [ip("10.244.1.17"), ip("fd00:10:244:1::17")]);
    assert_eq!(
        web.uid.as_deref(),
        Some("5f0c9e4e-2d7a-4d0a-b5a8-3c1f0b8e9d11")
    );
    assert_eq!(&web.labels["app"], "web");
    assert_eq!(web.node_name.as_deref(), Some("node-1"));
    assert!(!web.host_network);
    // Containers, then sidecars; the plain init container's port is not served.
    assert_eq!(
        *web.ports,
        [
            port(Some("http"), 8080, Protocol::Tcp),
            port(Some("metrics"), 9090, Protocol::Tcp),
            port(Some("proxy"), 15001, Protocol::Tcp),
            port(None, 15053, Protocol::Udp),
        ]
    );

    let dns = &pods[&ObjectKey::new("kube-system", "coredns-5d78c9869d-abcde")];
    assert_eq!(
        *dns.ports,
        [
            port(Some("dns"), 53, Protocol::Udp),
            port(Some("dns-tcp"), 53, Protocol::Tcp)
        ]
    );
    let proxy = &pods[&ObjectKey::new("kube-system", "kube-proxy-9xk2p")];
    assert!(proxy.host_network && proxy.host_pid);
    assert!(!web.host_pid);
    assert_eq!(proxy.uid, None);

    assert!(!pods.contains_key(&ObjectKey::new("team-a", "backup-28912345-q7v4d")));
    assert_eq!(loaded.skipped["Pod (Succeeded/Failed)"], 1);
    assert_eq!(loaded.skipped.len(), 1);
}

#[test]
fn namespaces_policies_and_other_kinds() {
    let loaded = load(&[testdata("namespaces.json"), testdata("cluster.yaml")]).unwrap();
    let cluster = &loaded.cluster;
    let names: Vec<_> = cluster.namespaces.keys().map(String::as_str).collect();
    assert_eq!(names, ["kube-system", "team-a", "team-b"]);
    assert_eq!(&cluster.namespaces["team-a"].labels["tenant"], "acme");
    assert_eq!(&cluster.namespaces["team-b"].labels["tenant"], "globex");

    let policy = &cluster.network_policies[&ObjectKey::new("team-a", "web-ingress")];
    assert_eq!(policy.key, ObjectKey::new("team-a", "web-ingress"));
    let app = |value: &str| [("app".to_string(), value.to_string())].into();
    assert!(policy.pod_selector.matches(&app("web")) && !policy.pod_selector.matches(&app("db")));
    assert!(policy.ingress.is_some(), "kept normalized: policyTypes defaulted");

    // No namespace in the manifest: default.
    let client = &cluster.pods[&ObjectKey::new("default", "client")];
    assert_eq!(client.ips, [ip("10.244.3.4")]);
    assert!(client.ports.is_empty());

    assert_eq!(loaded.skipped, [("ConfigMap".to_string(), 1)].into());
}

#[test]
fn pod_ips_fall_back_to_pod_ip_and_are_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let text = pod_yaml(
        "  podIP: 10.0.0.5\n  podIPs: [{ip: 10.0.0.5}, {ip: 10.0.0.5}, {ip: '::ffff:10.0.0.6'}]\n",
        "",
    );
    let loaded = load(&[write(dir.path(), "p.yaml", &text)]).unwrap();
    let pod = &loaded.cluster.pods[&ObjectKey::new("team-a", "web")];
    assert_eq!(
        pod.ips,
        [ip("10.0.0.5"), ip("10.0.0.6")],
        "IPv4-mapped becomes IPv4"
    );

    let text = pod_yaml("  podIP: 2001:db8::7\n", "");
    let loaded = load(&[write(dir.path(), "p.yaml", &text)]).unwrap();
    assert_eq!(
        loaded.cluster.pods[&ObjectKey::new("team-a", "web")].ips,
        [ip("2001:db8::7")]
    );

    let text = pod_yaml("  phase: Pending\n", "");
    let loaded = load(&[write(dir.path(), "p.yaml", &text)]).unwrap();
    assert!(loaded.cluster.pods[&ObjectKey::new("team-a", "web")]
        .ips
        .is_empty());
}

#[test]
fn bad_pod_ip_names_file_object_and_field() {
    let error = load_error(
        "p.yaml",
        &pod_yaml("  podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.999}]\n", ""),
    );
    assert!(
        error.contains(r#"p.yaml (document 1): Pod team-a/web: status.podIPs[1].ip: "10.0.0.999" is not an IP address"#),
        "{error}"
    );
    let error = load_error("p.yaml", &pod_yaml("  podIP: nonsense\n", ""));
    assert!(
        error.contains(r#"Pod team-a/web: status.podIP: "nonsense" is not an IP address"#),
        "{error}"
    );
    for unusable in ["0.0.0.0", "127.0.0.1", "::1", "224.0.0.1"] {
        let error = load_error("p.yaml", &pod_yaml(&format!("  podIP: '{unusable}'\n"), ""));
        assert!(
            error.contains("status.podIP") && error.contains("not a usable pod address"),
            "{error}"
        );
    }
}

#[test]
fn bad_container_ports_name_the_field() {
    let ports = |body: &str| format!("    ports:\n    - {body}\n");
    let error = load_error(
        "p.yaml",
        &pod_yaml("  {}\n", &ports("{containerPort: 70000}")),
    );
    assert!(
        error.contains("p.yaml (document 1): Pod team-a/web: spec.containers[0].ports[0].containerPort: 70000 is outside 1..=65535"),
        "{error}"
    );
    let error = load_error("p.yaml", &pod_yaml("  {}\n", &ports("{containerPort: 0}")));
    assert!(error.contains("containerPort: 0 is outside"), "{error}");
    let error = load_error(
        "p.yaml",
        &pod_yaml("  {}\n", &ports("{containerPort: 80, protocol: ICMP}")),
    );
    assert!(
        error.contains(
            r#"Pod team-a/web: spec.containers[0].ports[0].protocol: unknown protocol "ICMP""#
        ),
        "{error}"
    );
    // Type errors come from the decoder, with the path kept.
    let error = load_error(
        "p.yaml",
        &pod_yaml("  {}\n", &ports("{containerPort: http}")),
    );
    assert!(
        error.contains("Pod team-a/web: spec.containers[0].ports[0].containerPort: invalid type"),
        "{error}"
    );
}

#[test]
fn init_container_ports_are_checked_even_when_not_served() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-a}\nspec:\n  containers: [{name: a}]\n  initContainers:\n  - name: init\n    ports: [{containerPort: 99999}]\n";
    let error = load_error("p.yaml", text);
    assert!(
        error.contains("spec.initContainers[0].ports[0].containerPort: 99999"),
        "{error}"
    );
}

#[test]
fn missing_name_is_an_error() {
    let error = load_error(
        "n.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
    );
    assert!(
        error.contains("n.yaml (document 1): Namespace: metadata.name: missing"),
        "{error}"
    );
    let error = load_error(
        "n.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {containers: []}\n",
    );
    assert!(error.contains("Pod: metadata.name: missing"), "{error}");
}

#[test]
fn decode_errors_keep_the_field_path() {
    let error = load_error(
        "n.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: [1]}}\n",
    );
    assert!(
        error.contains("n.yaml (document 1): Namespace a: metadata.labels.x: invalid type"),
        "{error}"
    );
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: [a]}\n";
    let error = load_error("np.yaml", policy);
    assert!(
        error.contains(
            "NetworkPolicy n/p: spec.ingress[0].from[0].podSelector.matchLabels: invalid type"
        ),
        "{error}"
    );
}

#[test]
fn unsupported_versions_are_errors_and_foreign_policies_are_reported() {
    let error = load_error(
        "np.yaml",
        "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\n",
    );
    assert!(
        error.contains("NetworkPolicy n/p: apiVersion: extensions/v1beta1 is not supported"),
        "{error}"
    );
    let error = load_error("p.yaml", "apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n");
    assert!(
        error.contains("apiVersion: v2 is not supported (want v1)"),
        "{error}"
    );

    // Policies of other groups are never dropped silently: listed by name, not skipped.
    let dir = tempfile::tempdir().unwrap();
    let policies = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec: {selector: all()}\n---\n\
        apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin-deny}\nspec: {tier: Admin, priority: 10, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {}}]}]}\n---\n\
        apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: enforced}\nspec: {tier: Admin, priority: 10, subject: {namespaces: {}}}\n---\n\
        apiVersion: example.com/v1\nkind: Pod\nmetadata: {name: not-a-pod}\n---\n\
        apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let loaded = load(&[write(dir.path(), "c.yaml", policies)]).unwrap();
    assert_eq!(
        loaded.skipped,
        [("ConfigMap".to_string(), 1), ("Pod (example.com/v1)".to_string(), 1)].into()
    );
    assert!(loaded.cluster.network_policies.is_empty());
    // Both ClusterNetworkPolicies are in the model and enforced (`nodes` peers too).
    assert_eq!(loaded.cluster.cluster_network_policies.len(), 2);
    assert_eq!(loaded.unenforced.lines(), vec!["NetworkPolicy n/p (projectcalico.org/v3)".to_string()]);
    let error = load_error("cnp.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: n}\n");
    assert!(error.contains("CiliumNetworkPolicy: metadata.name: missing"), "{error}");
}

#[test]
fn duplicate_across_files_names_both_origins() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "a.yaml", &pod_yaml("  {}\n", ""));
    let second = write(
        dir.path(),
        "b.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\n---\n{}",
            pod_yaml("  {}\n", "")
        ),
    );
    let error = load(&[first, second]).unwrap_err();
    assert!(matches!(error, ManifestError::Duplicate { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("Pod team-a/web is defined twice"), "{text}");
    assert!(
        text.contains("a.yaml (document 1)") && text.contains("b.yaml (document 2)"),
        "{text}"
    );
}

#[test]
fn duplicate_namespace_and_default_namespace_collide() {
    let error = load_error("n.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n");
    assert!(error.contains("Namespace a is defined twice"), "{error}");
    // An absent namespace is `default`, so these two are the same pod.
    let pod = |ns: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x{ns}}}\nspec: {{containers: []}}\n")
    };
    let error = load_error(
        "p.yaml",
        &format!("{}---\n{}", pod(""), pod(", namespace: default")),
    );
    assert!(error.contains("Pod default/x is defined twice"), "{error}");
    // Same name, different kinds or namespaces: no conflict.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n",
        pod(""),
        pod(", namespace: other")
    );
    assert!(load(&[write(dir.path(), "ok.yaml", &text)]).is_ok());
}

#[test]
fn build_cluster_checks_documents_it_did_not_read() {
    let document = |value: serde_json::Value| Document {
        origin: Origin {
            file: "mem".into(),
            document: 1,
            item: None,
        },
        value,
    };
    let error = build_cluster(&[document(serde_json::json!({"kind": "Pod"}))]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("mem (document 1): Pod: apiVersion: missing"),
        "{error}"
    );
    let many =
        vec![document(serde_json::json!({"kind": "A", "apiVersion": "v1"})); MAX_OBJECTS + 1];
    assert!(matches!(
        build_cluster(&many),
        Err(ManifestError::TooManyObjects { .. })
    ));
}

#[test]
fn a_bad_cluster_network_policy_is_an_error_naming_file_object_and_field() {
    let cnp = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin}\nspec:\n  tier: Admin\n  priority: 3\n  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{networks: [10.1.0.0/33]}]}\n";
    let error = load_error("cnp.yaml", cnp);
    assert!(error.contains("cnp.yaml (document 1)"), "{error}");
    assert!(error.contains("ClusterNetworkPolicy admin: spec.egress[0].to[0].networks[0]: \"10.1.0.0/33\": prefix length must be 0..=32"), "{error}");
    let twice = format!("{}---\n{}", cnp.replace("/33", "/16"), cnp.replace("/33", "/8"));
    assert!(load_error("cnp.yaml", &twice).contains("ClusterNetworkPolicy"), "duplicates are errors");
    // The older API version is listed as unenforced without being read.
    let dir = tempfile::tempdir().unwrap();
    let anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: old}\nspec: {priority: 1}\n";
    let loaded = load(&[write(dir.path(), "anp.yaml", anp)]).unwrap();
    assert!(loaded.cluster.cluster_network_policies.is_empty());
    assert_eq!(loaded.unenforced.lines(), vec!["AdminNetworkPolicy old (policy.networking.k8s.io/v1alpha1)"]);
}

fn service_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n{spec}")
}

#[test]
fn services_keep_their_cluster_ips() {
    let dir = tempfile::tempdir().unwrap();
    let text = [
        service_yaml("dual", "  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.1, 'fd00:96::1']\n"),
        service_yaml("single", "  clusterIP: 10.96.0.2\n"),
        service_yaml("headless", "  clusterIP: None\n  clusterIPs: [None]\n"),
        service_yaml("external", "  type: ExternalName\n  externalName: db.example.com\n"),
    ]
    .join("---\n");
    let loaded = load(&[write(dir.path(), "s.yaml", &text)]).unwrap();
    let ips = |name: &str| loaded.cluster.services[&ObjectKey::new("team-a", name)].cluster_ips.clone();
    assert_eq!(ips("dual"), [ip("10.96.0.1"), ip("fd00:96::1")]);
    assert_eq!(ips("single"), [ip("10.96.0.2")]);
    assert!(ips("headless").is_empty() && ips("external").is_empty());
    assert!(loaded.skipped.is_empty(), "Services are read, not skipped: {:?}", loaded.skipped);
}

#[test]
fn bad_services_are_errors_naming_the_field() {
    let cases = [
        ("  clusterIPs: [10.96.0.1, nonsense]\n", r#"Service team-a/web: spec.clusterIPs[1]: "nonsense" is not an IP address"#),
        ("  clusterIP: 127.0.0.1\n", r#"Service team-a/web: spec.clusterIP: "127.0.0.1" is not a usable Service address"#),
        ("  clusterIPs: [10.96.0.1, 10.96.0.2]\n", "spec.clusterIPs[1]: \"10.96.0.2\": a second address of the same family"),
        ("  clusterIPs: [10.96.0.1, 'fd00::1', 10.96.0.3]\n", "spec.clusterIPs: 3 addresses (at most one per family)"),
        ("  clusterIP: 10.96.0.9\n  clusterIPs: [10.96.0.1]\n", r#"spec.clusterIP: "10.96.0.9" is not spec.clusterIPs[0] ("10.96.0.1")"#),
        ("  clusterIPs: [None, 10.96.0.1]\n", r#"spec.clusterIPs[0]: "None" (headless) must be the only entry"#),
        ("  clusterIPs: 10.96.0.1\n", "Service team-a/web: spec.clusterIPs: invalid type"),
    ];
    for (spec, want) in cases {
        let error = load_error("s.yaml", &service_yaml("web", spec));
        assert!(error.contains("s.yaml (document 1)") && error.contains(want), "{spec}: {error}");
    }
}
