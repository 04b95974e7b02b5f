//! A pod's traffic to itself — its loopback, its own address, the unspecified address that
//! the kernel turns into loopback — is never policed, however a NetworkPolicy isolates the
//! pod (Kubernetes: "Pods cannot block localhost access"; the upstream e2e suite expects a
//! pod to reach itself under every policy). Sidecars talk to their app over localhost, so a
//! default-deny policy must not cut them off — from any of the pod's containers. Traffic to
//! any other pod stays denied.

use std::time::Duration;

use moat_integration::guard::attack_bin;
use moat_integration::netpol::policy;
use moat_integration::{cgroup2_mount, documents, eventually, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict};

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

    // A second container of p (a cgroup of its own below the pod's, as a runtime makes one):
    // its unbound socket's connect to the pod's address is the pod's own too, whichever
    // container's cgroup the agent wrote first for that address.
    let sidecar = cgroup2_mount().expect("cgroup v2 is mounted").join(format!("moat-lab-{}/pods/a_p/sidecar", lab.name()));
    std::fs::create_dir(&sidecar).expect("the sidecar's cgroup");
    let in_sidecar = |command: String| {
        let script = format!("echo $$ > {}/cgroup.procs && exec {command}", sidecar.display());
        lab.exec("a/p", &["sh", "-c", &script])
    };
    for address in [own_v4.as_str(), own_v6.as_str(), "127.0.0.1"] {
        // Until the agent has attributed the new cgroup, its traffic is pending.
        let reached = eventually(Duration::from_secs(10), || {
            let output = in_sidecar(format!("{attack} loop connect-tcp 3 --address {address}"));
            (output.success && output.stdout.contains("\"iterations\":3")).then_some(output)
        });
        assert!(reached.is_some(), "the sidecar reaches its pod's own listener on {address}:\n{:?}\nagent log:\n{}", in_sidecar(format!("{attack} loop connect-tcp 3 --address {address}")), lab.agent_log());
    }
    let q = lab.pod_ip("a/q", Family::V4).to_string();
    let output = in_sidecar(format!("{attack} connect-tcp {q} 80"));
    assert!(output.stdout.contains("EPERM"), "the sidecar's connect to another pod stays refused:\n{output:?}");
}
