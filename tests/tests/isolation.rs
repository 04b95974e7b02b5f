//! The tenant floor over TCP, UDP and ICMP, IPv4 and IPv6: full reachability matrices, cluster
//! DNS as the one shared service, and the deny event in the agent's log.

use std::time::Duration;

use moat_integration::{documents, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict};

const DNS: &str = "kube-system/dns";

/// Tenant of each pod; every pod serves every probed port, so a deny is moat's, never a
/// closed port (and an allow means the probe got its echo back: replies work).
fn tenant(pod: &str) -> &'static str {
    match pod.split('/').next() {
        Some("a1" | "a2") => "a",
        Some("b1") => "b",
        Some("kube-system") => "ns:kube-system",
        _ => panic!("unexpected pod {pod}"),
    }
}

fn expected(from: &str, to: &str, dns_port: bool) -> Verdict {
    let allow = if from == DNS {
        false // cluster DNS may answer, but not open flows to tenants
    } else if to == DNS {
        dns_port
    } else {
        tenant(from) == tenant(to)
    };
    if allow {
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

#[test]
fn tenants_are_isolated_and_share_only_cluster_dns() {
    let ports: &[(u16, &str)] = &[(80, "TCP"), (5353, "UDP"), (53, "UDP"), (53, "TCP")];
    let manifests = Manifests::new();
    let file = manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("kube-system", &[]),
            pod_yaml("kube-system", "dns", &[("k8s-app", "kube-dns")], ports),
            namespace_yaml("a1", &[("tenant", "a")]),
            namespace_yaml("a2", &[("tenant", "a")]),
            namespace_yaml("b1", &[("tenant", "b")]),
            pod_yaml("a1", "p1", &[], ports),
            pod_yaml("a1", "p2", &[], ports),
            pod_yaml("a2", "p3", &[], ports),
            pod_yaml("b1", "p4", &[], ports),
        ]),
    );
    let lab = Lab::up(&[file], UpOptions::default());

    for family in Family::BOTH {
        for (port, dns_port) in [("80/TCP", false), ("5353/UDP", false), ("icmp", false), ("53/UDP", true), ("53/TCP", true)] {
            let cells = lab.matrix_family(port, family);
            assert_eq!(cells.len(), 5 * 4, "{port} {family:?}: every ordered pair of 5 pods: {cells:?}");
            let wrong: Vec<String> = cells
                .iter()
                .filter(|(from, to, verdict)| *verdict != expected(from, to, dns_port))
                .map(|(from, to, verdict)| {
                    format!("{from} -> {to}: got {verdict:?}, want {:?}", expected(from, to, dns_port))
                })
                .collect();
            assert!(wrong.is_empty(), "{port} over {family:?}:\n{}", wrong.join("\n"));
        }
    }
    // The matrices above include, explicitly: same tenant across namespaces (a1 <-> a2),
    // DNS on 53 from every tenant, not on 80, and no flow from DNS to a tenant.
    assert_eq!(lab.probe("a2/p3", "a1/p1", "80/TCP"), Verdict::Allowed);
    assert_eq!(lab.probe("b1/p4", DNS, "53/UDP"), Verdict::Allowed);
    assert_eq!(lab.probe("b1/p4", DNS, "80/TCP"), Verdict::Denied);

    // The deny event names both ends and the rule.
    assert_eq!(lab.probe("a1/p1", "b1/p4", "80/TCP"), Verdict::Denied);
    let want = [
        ("message", "deny"),
        ("rule", "tenant-floor"),
        ("src_tenant", "a"),
        ("src_namespace", "a1"),
        ("src_pod", "p1"),
        ("dst_tenant", "b"),
        ("dst_namespace", "b1"),
        ("dst_pod", "p4"),
        ("protocol", "TCP"),
    ];
    let line = lab.wait_log_line(
        |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|event| want.iter().all(|(key, value)| event[*key] == *value) && event["dst_port"] == 80)
                .unwrap_or(false)
        },
        Duration::from_secs(10),
    );
    assert!(line.is_ok(), "no deny event a1/p1 -> b1/p4 port 80 in the agent's log; tail:\n{}", line.unwrap_err());
}
