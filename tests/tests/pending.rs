//! A pod the agent has not heard of (a `hidden` lab pod) is pending: no traffic to tenants,
//! cluster DNS only, until the manifests list it.

use std::time::Duration;

use moat_integration::{documents, namespace_yaml, pod_yaml, pod_yaml_with_role, wait_verdict, Lab, Manifests, UpOptions, Verdict};

fn cluster(hidden: bool) -> String {
    let ports: &[(u16, &str)] = &[(80, "TCP"), (53, "UDP")];
    let h = if hidden {
        pod_yaml_with_role("a1", "h", "hidden", &[], ports)
    } else {
        pod_yaml("a1", "h", &[], ports)
    };
    documents(&[
        namespace_yaml("kube-system", &[]),
        pod_yaml("kube-system", "dns", &[("k8s-app", "kube-dns")], ports),
        namespace_yaml("a1", &[("tenant", "a")]),
        namespace_yaml("b1", &[("tenant", "b")]),
        h,
        pod_yaml("a1", "p", &[], ports),
        pod_yaml("b1", "q", &[], ports),
    ])
}

#[test]
fn pending_pod_reaches_only_dns_until_it_is_known() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[manifests.write("hidden.yaml", &cluster(true))], UpOptions::default());
    assert_eq!(lab.status()["pods"]["a1/h"]["role"], "hidden");

    assert_eq!(lab.probe("a1/h", "a1/p", "80/TCP"), Verdict::Denied, "pending -> own tenant");
    assert_eq!(lab.probe("a1/h", "b1/q", "80/TCP"), Verdict::Denied, "pending -> other tenant");
    assert_eq!(lab.probe("a1/h", "kube-system/dns", "53/UDP"), Verdict::Allowed, "pending -> DNS");
    // The same pair once known is allowed (below): the deny above is the pending state.

    lab.apply(&[manifests.write("known.yaml", &cluster(false))]);
    assert_eq!(lab.status()["pods"]["a1/h"]["role"], "pod");
    let took = wait_verdict("a1/h -> a1/p after apply", Verdict::Allowed, Duration::from_secs(10), || {
        lab.probe("a1/h", "a1/p", "80/TCP")
    });
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(lab.probe("a1/h", "b1/q", "80/TCP"), Verdict::Denied, "known pod -> other tenant");
    assert_eq!(lab.probe("a1/p", "a1/h", "80/TCP"), Verdict::Allowed, "own tenant -> known pod");
}
