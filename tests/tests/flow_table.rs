//! The flow table under a flood from one tenant. Tenant b fills `FLOWS` (262,144 entries)
//! with UDP datagrams from several sockets to every port of its own peer, so every set evicts.
//! Meanwhile tenant a's idle TCP connection, its idle UDP session — with an ingress-deny
//! NetworkPolicy on a's client, so the server's replies pass only by flow state — and new
//! connections (IPv4 and IPv6, and a ping) keep working. What a full table means is in
//! docs/design.md ("Flow table and revocation"); its fill is `moat_map_entries{map="FLOWS"}`.

use std::process::{Command, Stdio};

use moat_integration::{documents, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict};

/// Datagrams b sends: more distinct flows than the table holds.
const FLOOD_FLOWS: u64 = 400_000;

#[test]
fn a_tenant_filling_the_flow_table_breaks_no_other_tenants_flows() {
    let manifests = Manifests::new();
    let file = manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            namespace_yaml("b1", &[("tenant", "b")]),
            pod_yaml("a1", "client", &[("app", "client")], &[]),
            pod_yaml("a1", "server", &[("app", "server")], &[(80, "TCP"), (80, "UDP")]),
            pod_yaml("b1", "flood", &[], &[]),
            pod_yaml("b1", "sink", &[], &[(9, "UDP")]),
            // a's client takes no connection in: the server's replies pass by flow state only.
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-no-ingress, namespace: a1}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Ingress]\n".to_string(),
        ]),
    );
    let lab = Lab::up(&[file], UpOptions::default());
    let mut tcp = lab.hold("a1/client", "a1/server", 80, Family::V4);
    let mut udp = lab.hold_udp("a1/client", "a1/server", 80, Family::V4);
    let mut udp6 = lab.hold_udp("a1/client", "a1/server", 80, Family::V6);
    tcp.ping().expect("TCP before the flood");
    udp.ping().expect("UDP before the flood");
    udp6.ping().expect("UDP over IPv6 before the flood");

    let sink = lab.pod_ip("b1/sink", Family::V4).to_string();
    let output = Command::new(lab.moat())
        .args(["lab", "exec", "--name", lab.name(), "b1/flood", "--"])
        .arg(lab.lab_bin())
        .args(["__pod-burst", "--protocol", "udp", "--to", &sink, "--port", "1", "--ports", "65535", "--sockets", "8"])
        .args(["--count", &FLOOD_FLOWS.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("running the flood");
    let flood = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "flood: {flood}");
    eprintln!("flood: {flood}");
    let flood: serde_json::Value = serde_json::from_str(flood.lines().last().unwrap_or_default()).expect("flood JSON");
    assert!(flood["sent"].as_u64().unwrap_or(0) > 262_144, "more flows than the table holds were sent: {flood}");

    let status = Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("moat status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let flows = status["kernel"]["maps"].as_array().into_iter().flatten().find(|m| m["map"] == "FLOWS").cloned().unwrap_or_default();
    eprintln!("FLOWS after the flood: {flows}");
    assert!(flows["entries"].as_u64().unwrap_or(0) * 10 >= flows["capacity"].as_u64().unwrap_or(u64::MAX) * 9, "the table is (nearly) full: {flows}");

    // a's idle flows, and new ones, all work.
    tcp.ping().expect("the idle TCP connection after the flood");
    udp.ping().expect("the idle UDP session after the flood (replies by flow state)");
    udp6.ping().expect("the idle IPv6 UDP session after the flood");
    assert_eq!(lab.probe("a1/client", "a1/server", "80/TCP"), Verdict::Allowed, "a new TCP connection");
    assert_eq!(lab.probe("a1/client", "a1/server", "80/UDP"), Verdict::Allowed, "a new UDP exchange");
    assert_eq!(lab.probe_family("a1/client", "a1/server", "80/TCP", Family::V6), Verdict::Allowed, "a new IPv6 TCP connection");
    assert_eq!(lab.probe("a1/client", "a1/server", "icmp"), Verdict::Allowed, "a ping (its reply by flow state)");
}
