//! What one object may cost the agent. Kubernetes bounds an object's size (about 1.5 MiB)
//! but not how many labels, selector terms or rule combinations it holds, and each of these
//! multiplies work the compiler does on every change: a pod with 10,000 labels, a selector
//! of 100,000 values or a policy of 1,000 peers × 1,000 ports would make every recompile slow
//! for the whole node. Far above what real clusters use, such an object is refused, naming
//! it and the field, like any invalid object: the last good version of it stays (API
//! server), or the load fails (files). A refused pod is not in the model, so its address is
//! pending: nothing cross-tenant reaches it.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use std::collections::BTreeMap;

/// Labels as the API has them.
type Labels = BTreeMap<String, String>;

/// Labels on one object.
pub const MAX_LABELS: usize = 1024;
/// IP addresses read from one Node (a node has a handful; more is not a Node a kubelet wrote).
pub const MAX_NODE_ADDRESSES: usize = 64;
/// Terms of one label selector: `matchLabels` entries, expressions and their values.
pub const MAX_SELECTOR_TERMS: usize = 1024;
/// Peers × ports of one NetworkPolicy, summed over its rules (a port range counts as the
/// prefixes it compiles to, at most 32).
pub const MAX_POLICY_TERMS: usize = 65_536;

/// `(field path, message)` of the first limit exceeded.
pub type Exceeded = (String, String);

pub fn labels(labels: Option<&Labels>, field: &str) -> Result<(), Exceeded> {
    match labels.map(Labels::len) {
        Some(count) if count > MAX_LABELS => Err((field.into(), format!("{count} labels; moat accepts at most {MAX_LABELS} per object"))),
        _ => Ok(()),
    }
}

pub fn selector(selector: &LabelSelector, field: &str) -> Result<(), Exceeded> {
    let expressions = selector.match_expressions.iter().flatten();
    let terms = selector.match_labels.as_ref().map_or(0, BTreeMap::len)
        + expressions.map(|e| 1 + e.values.as_ref().map_or(0, Vec::len)).sum::<usize>();
    if terms > MAX_SELECTOR_TERMS {
        return Err((field.into(), format!("{terms} selector terms; moat accepts at most {MAX_SELECTOR_TERMS} per selector")));
    }
    Ok(())
}

/// Every selector's size and the policy's peer × port expansion.
pub fn network_policy(policy: &NetworkPolicy) -> Result<(), Exceeded> {
    let Some(spec) = &policy.spec else { return Ok(()) };
    if let Some(pod_selector) = &spec.pod_selector {
        selector(pod_selector, "spec.podSelector")?;
    }
    let ingress = spec.ingress.iter().flatten().enumerate().map(|(i, rule)| (format!("spec.ingress[{i}].from"), rule.from.as_deref(), rule.ports.as_deref()));
    let egress = spec.egress.iter().flatten().enumerate().map(|(i, rule)| (format!("spec.egress[{i}].to"), rule.to.as_deref(), rule.ports.as_deref()));
    let mut terms = 0usize;
    for (field, peers, ports) in ingress.chain(egress) {
        for (i, peer) in peers.into_iter().flatten().enumerate() {
            peer_selectors(peer, &format!("{field}[{i}]"))?;
        }
        let peer_count = peers.map_or(1, |peers| peers.len().max(1));
        let port_count = ports.map_or(1, |ports| ports.iter().map(port_prefixes).sum::<usize>().max(1));
        terms = terms.saturating_add(peer_count.saturating_mul(port_count));
    }
    if terms > MAX_POLICY_TERMS {
        return Err(("spec".into(), format!("{terms} peer × port combinations; moat accepts at most {MAX_POLICY_TERMS} per policy")));
    }
    Ok(())
}

fn peer_selectors(peer: &NetworkPolicyPeer, field: &str) -> Result<(), Exceeded> {
    if let Some(pods) = &peer.pod_selector {
        selector(pods, &format!("{field}.podSelector"))?;
    }
    if let Some(namespaces) = &peer.namespace_selector {
        selector(namespaces, &format!("{field}.namespaceSelector"))?;
    }
    Ok(())
}

/// The prefixes a port entry compiles to: 1, or up to 32 for a range.
fn port_prefixes(port: &NetworkPolicyPort) -> usize {
    if port.end_port.is_some() { 32 } else { 1 }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::path::Path;

    use crate::sources::manifests::{build_cluster, parse_text, ManifestError};

    fn load(yaml: &str) -> Result<crate::sources::manifests::Loaded, ManifestError> {
        build_cluster(&parse_text(Path::new("big.yaml"), yaml)?)
    }

    #[test]
    fn a_pod_with_ten_thousand_labels_is_refused_by_name() {
        let mut yaml = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: big\n  namespace: a1\n  labels:\n");
        for i in 0..10_000 {
            let _ = writeln!(yaml, "    l{i}: v");
        }
        let error = load(&yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("Pod a1/big") && error.contains("metadata.labels") && error.contains("10000 labels"), "{error}");
    }

    #[test]
    fn a_selector_of_a_hundred_thousand_values_is_refused_by_name() {
        let values: Vec<String> = (0..100_000).map(|i| format!("v{i}")).collect();
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: wide, namespace: a1}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{{key: tenant, operator: In, values: [{}]}}]\n",
            values.join(", ")
        );
        let error = load(&yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("NetworkPolicy a1/wide") && error.contains("spec.ingress[0].from[0].namespaceSelector") && error.contains("100001 selector terms"),
            "{error}"
        );
    }

    #[test]
    fn a_policy_of_too_many_peer_port_combinations_is_refused() {
        let peers: String = (0..300).map(|i| format!("    - podSelector: {{matchLabels: {{app: a{i}}}}}\n")).collect();
        let ports: String = (0..300).map(|i| format!("    - port: {}\n", 1000 + i)).collect();
        let yaml = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: product, namespace: a1}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n{peers}    ports:\n{ports}");
        let error = load(&yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("NetworkPolicy a1/product") && error.contains("90000 peer × port combinations"), "{error}");
    }

    #[test]
    fn a_one_mebibyte_object_is_read_and_costs_what_it_holds() {
        // Kubernetes allows objects up to about 1.5 MiB: a pod carrying 1 MiB of annotations
        // is valid, and the model keeps none of them.
        let annotation = "x".repeat(1 << 20);
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: heavy\n  namespace: a1\n  annotations: {{blob: {annotation}}}\n");
        let loaded = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.cluster.pods.len(), 1);
    }

    #[test]
    fn deep_nesting_is_refused_by_document() {
        let mut yaml = String::from("apiVersion: v1\nkind: Pod\nmetadata: {name: deep, namespace: a1}\nspec:\n  deep:\n");
        for depth in 0..300 {
            let _ = writeln!(yaml, "{}n:", "  ".repeat(depth + 2));
        }
        let error = load(&yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("big.yaml (document 1)") && error.contains("recursion limit"), "{error}");
        let flow = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let error = load(&flow).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("nested more than 1000 deep"), "{error}");
        let json = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        let error = parse_text(Path::new("deep.json"), &json).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("deep.json (document 1)") && error.contains("recursion limit"), "{error}");
    }
}
