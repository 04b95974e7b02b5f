//! The lab itself, no agent: pods come up and two pods of one namespace reach each other.

use moat_integration::{documents, namespace_yaml, pod_yaml, Lab, Manifests, UpOptions, Verdict};

#[test]
fn same_namespace_probe_is_allowed_without_an_agent() {
    let manifests = Manifests::new();
    let file = manifests.write(
        "smoke.yaml",
        &documents(&[
            namespace_yaml("smoke", &[("tenant", "alpha")]),
            pod_yaml("smoke", "client", &[("app", "client")], &[(80, "TCP")]),
            pod_yaml("smoke", "server", &[("app", "server")], &[(80, "TCP")]),
        ]),
    );

    let lab = Lab::up(&[file], UpOptions { no_agent: true, ..UpOptions::default() });

    assert_eq!(lab.probe("smoke/client", "smoke/server", "80/TCP"), Verdict::Allowed);
    // `lab` is dropped here: `moat lab down` runs (also if an assertion above failed).
}
