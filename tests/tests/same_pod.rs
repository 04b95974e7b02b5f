//! A pod's traffic to itself — its loopback, its own address, the unspecified address that
//! the kernel turns into loopback — is never policed, however a NetworkPolicy isolates the
//! pod (Kubernetes: "Pods cannot block localhost access"; the upstream e2e suite expects a
//! pod to reach itself under every policy). Sidecars talk to their app over localhost, so a
//! default-deny policy must not cut them off. Traffic to any other pod stays denied.

use moat_integration::guard::attack_bin;
use moat_integration::netpol::policy;
use moat_integration::{documents, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict};

#[test]
fn a_default_deny_pod_reaches_itself_and_nothing_else() {
    let ports: &[(u16, &str)] = &[(80, "TCP")];
    let manifests = Manifests::new();
    let cluster = documents(&[
        namespace_yaml("a", &[("tenant", "a")]),
        pod_yaml("a", "p", &[], ports),
        pod_yaml("a", "q", &[], ports),
        policy("a", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
    ]);
    let lab = Lab::up(&[manifests.write("cluster.yaml", &cluster)], UpOptions::default());
    let attack = attack_bin();
    let attack = attack.to_str().expect("UTF-8 path");

    let own_v4 = lab.pod_ip("a/p", Family::V4).to_string();
    let own_v6 = lab.pod_ip("a/p", Family::V6).to_string();
    for address in ["127.0.0.1", "127.0.0.53", "::1", own_v4.as_str(), own_v6.as_str()] {
        let output = lab.exec("a/p", &[attack, "loop", "connect-tcp", "3", "--address", address]);
        assert!(
            output.success && output.stdout.contains("\"iterations\":3"),
            "a/p reaches its own listener on {address} under a deny-all policy:\n{output:?}\nagent log:\n{}",
            lab.agent_log()
        );
    }
    // connect() to 0.0.0.0 reaches 127.0.0.1: refused by the (absent) listener, not by moat.
    let output = lab.exec("a/p", &[attack, "connect-tcp", "0.0.0.0", "1"]);
    assert!(output.stdout.contains("ECONNREFUSED"), "connect to 0.0.0.0 goes to loopback:\n{output:?}");

    for family in Family::BOTH {
        assert_eq!(lab.probe_family("a/p", "a/q", "80/TCP", family), Verdict::Denied, "p -> q stays denied ({family:?})");
        assert_eq!(lab.probe_family("a/q", "a/p", "80/TCP", family), Verdict::Denied, "q -> p stays denied ({family:?})");
    }
}
