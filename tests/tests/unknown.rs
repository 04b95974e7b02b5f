//! Endpoints that are not pods (an `external` lab host): allowed by default, denied with
//! `unknownEndpoints: deny` — pings into a pod included, which only the tc program on the
//! pod's interface sees (the external host has no cgroup hooks, the pod's kernel answers).

use moat_integration::{documents, namespace_yaml, pod_yaml, pod_yaml_with_role, Family, Lab, Manifests, UpOptions, Verdict};

fn cluster(manifests: &Manifests) -> std::path::PathBuf {
    manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("x", &[("tenant", "a")]),
            pod_yaml("x", "p", &[], &[(80, "TCP")]),
            pod_yaml("x", "q", &[], &[(80, "TCP")]),
            pod_yaml_with_role("outside", "host", "external", &[], &[(80, "TCP")]),
        ]),
    )
}

fn assert_external(lab: &Lab) {
    let status = lab.status();
    let host = &status["pods"]["outside/host"];
    assert_eq!(host["role"], "external", "{status}");
    let cgroup = host["cgroup"].as_str().unwrap_or_default();
    assert!(cgroup.contains(&format!("/moat-lab-{}/external/", lab.name())), "{cgroup}");
    let cluster = std::fs::read_to_string(lab.manifests_dir().join("cluster.json")).unwrap();
    assert!(!cluster.contains("\"host\""), "the agent must not know the external host:\n{cluster}");
}

#[test]
fn unknown_endpoints_are_allowed_by_default() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[cluster(&manifests)], UpOptions::default());
    assert_external(&lab);
    for family in Family::BOTH {
        assert_eq!(lab.probe_family("x/p", "outside/host", "80/TCP", family), Verdict::Allowed, "{family:?}");
        assert_eq!(lab.probe_family("outside/host", "x/p", "80/TCP", family), Verdict::Allowed, "{family:?}");
        assert_eq!(lab.probe_family("outside/host", "x/p", "icmp", family), Verdict::Allowed, "{family:?}");
    }
}

#[test]
fn unknown_endpoints_are_denied_when_configured() {
    let manifests = Manifests::new();
    let config = manifests.write("moat.yaml", "unknownEndpoints: deny\n");
    let lab = Lab::up(&[cluster(&manifests)], UpOptions { config: Some(config), ..UpOptions::default() });
    assert_external(&lab);
    for family in Family::BOTH {
        assert_eq!(lab.probe_family("x/p", "outside/host", "80/TCP", family), Verdict::Denied, "{family:?}");
        assert_eq!(lab.probe_family("outside/host", "x/p", "80/TCP", family), Verdict::Denied, "{family:?}");
        assert_eq!(lab.probe_family("outside/host", "x/p", "icmp", family), Verdict::Denied, "{family:?}");
        // Pods are still pods: same tenant stays allowed.
        assert_eq!(lab.probe_family("x/p", "x/q", "80/TCP", family), Verdict::Allowed, "{family:?}");
        assert_eq!(lab.probe_family("x/q", "x/p", "icmp", family), Verdict::Allowed, "{family:?}");
    }
    // The ping's deny names the pod it was for and the rule.
    let event = lab.wait_log_line(
        |line| line.contains("\"protocol\":\"ICMP\"") && line.contains("\"rule\":\"unknown-endpoint-denied\"") && line.contains("\"direction\":\"ingress\""),
        std::time::Duration::from_secs(5),
    );
    let event: serde_json::Value = serde_json::from_str(&event.unwrap_or_else(|tail| panic!("no ICMP ingress deny event:\n{tail}"))).unwrap();
    assert_eq!((event["dst_namespace"].as_str(), event["dst_pod"].as_str()), (Some("x"), Some("p")), "{event}");
    assert_eq!(event["hook"], "packet", "{event}");
}
