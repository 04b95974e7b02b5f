//! NetworkPolicy checks (`sources::policy_checks`) as a manifest file meets them: refused at
//! load time, naming file, object and field.

use std::path::Path;

use super::{build_cluster, Document, Origin};

/// Loads a policy with the given `spec` (YAML, indented two spaces); the error as text.
fn error(spec: &str) -> String {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: n}}\nspec:\n{spec}"
    );
    let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let origin = Origin {
        file: Path::new("np.yaml").into(),
        document: 1,
        item: None,
    };
    match build_cluster(&[Document { origin, value }]) {
        Ok(_) => String::new(),
        Err(error) => error.to_string(),
    }
}

fn assert_error(spec: &str, expected: &str) {
    let error = error(spec);
    assert!(
        error.starts_with("np.yaml (document 1): NetworkPolicy n/p: "),
        "{error}"
    );
    assert!(error.contains(expected), "want {expected:?} in {error}");
}

#[test]
fn valid_policies_load() {
    let specs = [
        "  podSelector: {}\n",
        "  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}\n  policyTypes: [Ingress, Egress]\n  egress: [{}]\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: web}}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}\n    - ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}\n    ports: [{port: 80}, {port: http, protocol: TCP}, {port: 8000, endPort: 8080}, {protocol: UDP}]\n",
        "  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]\n",
    ];
    for spec in specs {
        assert_eq!(error(spec), "", "{spec}");
    }
}

#[test]
fn bad_selectors_name_the_selector() {
    assert_error(
        "  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}\n",
        "spec.podSelector: matchExpressions[0]: unknown operator \"Equals\"",
    );
    assert_error(
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: tenant, operator: In}]}\n",
        "spec.ingress[0].from[0].namespaceSelector: matchExpressions[0]: operator In on key \"tenant\" needs at least one value",
    );
    assert_error(
        "  podSelector: {}\n  egress:\n  - to:\n    - podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}\n",
        "spec.egress[0].to[0].podSelector: matchExpressions[0]: operator Exists",
    );
}

#[test]
fn bad_peers() {
    assert_error(
        "  podSelector: {}\n  ingress: [{from: [{}]}]\n",
        "spec.ingress[0].from[0]: a peer needs",
    );
    assert_error(
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
        "spec.ingress[0].from[0]: ipBlock cannot be combined",
    );
    assert_error(
        "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
        "spec.egress[0].to[0].ipBlock.cidr:",
    );
    for except in ["192.168.0.0/24", "10.0.0.0/8", "10.0.0.0/7", "'::/128'"] {
        assert_error(
            &format!("  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{except}]}}}}]}}]\n"),
            "spec.egress[0].to[0].ipBlock.except[0]:",
        );
    }
}

#[test]
fn bad_ports_and_types() {
    let ports = |ports: &str| format!("  podSelector: {{}}\n  ingress: [{{ports: [{ports}]}}]\n");
    assert_error(
        &ports("{port: 80, protocol: ICMP}"),
        "spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"",
    );
    assert_error(
        &ports("{port: 0}"),
        "spec.ingress[0].ports[0].port: 0 is outside 1..=65535",
    );
    assert_error(
        &ports("{port: 80}, {port: 65536}"),
        "spec.ingress[0].ports[1].port: 65536 is outside",
    );
    assert_error(
        &ports("{port: Not_A_Name}"),
        "spec.ingress[0].ports[0].port: \"Not_A_Name\" is not a port number",
    );
    assert_error(
        &ports("{port: http, endPort: 90}"),
        "spec.ingress[0].ports[0].endPort: needs a numeric port",
    );
    assert_error(
        &ports("{port: 90, endPort: 80}"),
        "spec.ingress[0].ports[0].endPort: 80 is outside 90..=65535",
    );
    assert_error(
        "  podSelector: {}\n  policyTypes: [Ingress, ingress]\n",
        "spec.policyTypes[1]: unknown policy type \"ingress\"",
    );
}
