//! Node objects: this node's labels, picked by name or as the only Node; bad ones refused.

use super::read_tests::{testdata, write};
use super::*;

fn node(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n{labels}")
}

fn load_text(text: &str, node_name: Option<&str>) -> Result<Loaded, ManifestError> {
    let dir = tempfile::tempdir().unwrap();
    load_for_node(&[write(dir.path(), "nodes.yaml", text)], node_name)
}

#[test]
fn kubectl_node_list_gives_the_named_nodes_labels() {
    let loaded = load_for_node(&[testdata("nodes-list.yaml")], Some("node-1")).unwrap();
    assert_eq!(&loaded.cluster.node_labels["node-restriction.kubernetes.io/tenant"], "alpha");
    assert_eq!(&loaded.cluster.node_labels["kubernetes.io/hostname"], "node-1");
    assert_eq!(loaded.nodes.len(), 2);
    // Every Node's addresses are in the model (host names are not addresses).
    assert_eq!(loaded.cluster.nodes.len(), 2);
    assert_eq!(loaded.cluster.nodes["node-1"].addresses, vec!["172.18.0.3".parse::<std::net::IpAddr>().unwrap()]);
    assert!(loaded.skipped.is_empty(), "Nodes are read, not skipped: {:?}", loaded.skipped);
    let other = load_for_node(&[testdata("nodes-list.yaml")], Some("node-2")).unwrap();
    assert_eq!(other.cluster.node_labels.get("node-restriction.kubernetes.io/tenant"), None);
    let absent = load_for_node(&[testdata("nodes-list.yaml")], Some("node-9")).unwrap();
    assert!(absent.cluster.node_labels.is_empty(), "no Node of that name: no labels");
}

#[test]
fn without_a_node_name_the_only_node_is_this_one() {
    let loaded = load_text(&node("n1", "    profile: gpu\n"), None).unwrap();
    assert_eq!(&loaded.cluster.node_labels["profile"], "gpu");
    assert!(load_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n", None).unwrap().cluster.node_labels.is_empty());
}

#[test]
fn several_nodes_without_a_node_name_is_an_error_naming_them() {
    let error = load_for_node(&[testdata("nodes-list.yaml")], None).unwrap_err().to_string();
    assert!(error.contains("several Node objects") && error.contains("nodeName"), "{error}");
    assert!(error.contains("Node node-1 at ") && error.contains("Node node-2 at "), "{error}");
    assert!(error.contains("nodes-list.yaml (document 1, item 1)"), "{error}");
    assert!(error.contains("nodes-list.yaml (document 1, item 2)"), "{error}");
}

#[test]
fn bad_nodes_are_refused_naming_file_object_and_field() {
    let unnamed = load_text("apiVersion: v1\nkind: Node\nmetadata:\n  labels:\n    a: b\n", None).unwrap_err().to_string();
    assert!(unnamed.contains("nodes.yaml (document 1)") && unnamed.contains("metadata.name: missing"), "{unnamed}");
    let label = load_text(&node("n1", "    tenant: [alpha]\n"), None).unwrap_err().to_string();
    assert!(label.contains("Node n1") && label.contains("metadata.labels.tenant"), "{label}");
    let version = load_text("apiVersion: v2\nkind: Node\nmetadata:\n  name: n1\n", None).unwrap_err().to_string();
    assert!(version.contains("Node n1") && version.contains("apiVersion: v2 is not supported (want v1)"), "{version}");
    let address = format!("{}status:\n  addresses:\n  - {{type: Hostname, address: n1}}\n  - {{type: InternalIP, address: 10.0.0.300}}\n", node("n1", "    a: b\n"));
    let address = load_text(&address, None).unwrap_err().to_string();
    assert!(address.contains("Node n1") && address.contains("status.addresses[1].address: \"10.0.0.300\" is not an IP address"), "{address}");
    let many: String = (0..=64).map(|i| format!("  - {{type: ExternalIP, address: 192.0.2.{i}}}\n")).collect();
    let many = load_text(&format!("{}status:\n  addresses:\n{many}", node("n1", "    a: b\n")), None).unwrap_err().to_string();
    assert!(many.contains("Node n1") && many.contains("status.addresses[64].address: more than 64 IP addresses"), "{many}");
    let twice = format!("{}---\n{}", node("n1", "    a: b\n"), node("n1", "    a: c\n"));
    let twice = load_text(&twice, Some("n1")).unwrap_err().to_string();
    assert!(twice.contains("Node n1 is defined twice"), "{twice}");
}
