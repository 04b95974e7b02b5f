//! Bad input never weakens enforcement: a bad agent config stops the agent at start, a
//! malformed manifest edit is reported and ignored (with everything written with it), and a
//! bad manifest stops `lab up` before anything is made.

use std::process::Command;
use std::time::Duration;

use moat_integration::{
    documents, leftovers, moat_bin, namespace_yaml, output_within, pod_yaml, require_root, wait_verdict, Lab,
    Manifests, UpOptions, Verdict,
};

#[test]
fn agent_rejects_bad_config_naming_file_and_field() {
    require_root();
    let manifests = Manifests::new();
    let cluster_dir = manifests.dir().join("cluster");
    std::fs::create_dir(&cluster_dir).unwrap();
    for (file, text, field) in [
        ("unknown-field.yaml", "tenantLabel: tenant\nunknownEndpoint: deny\n", "unknownEndpoint"),
        ("bad-cidr.yaml", "clusterCidrs: [\"10.0.0.0/8\", \"10.1.0.0/33\"]\n", "clusterCidrs[1]"),
    ] {
        let config = manifests.write(file, text);
        let output = output_within(
            Command::new(moat_bin()).arg("agent").arg("-f").arg(&cluster_dir).arg("--config").arg(&config),
            Duration::from_secs(10),
        );
        assert!(!output.success && output.code.is_some(), "{output}");
        assert!(output.stderr.contains(&config.display().to_string()), "stderr names the file:\n{output}");
        assert!(output.stderr.contains(field), "stderr names {field}:\n{output}");
    }
}

fn cluster(y_tenant: &str) -> String {
    documents(&[
        namespace_yaml("x", &[("tenant", "a")]),
        namespace_yaml("y", &[("tenant", y_tenant)]),
        namespace_yaml("z", &[("tenant", "b")]),
        pod_yaml("x", "p", &[], &[(80, "TCP")]),
        pod_yaml("y", "q", &[], &[(80, "TCP")]),
        pod_yaml("z", "r", &[], &[(80, "TCP")]),
    ])
}

fn rejections(lab: &Lab, file: &str) -> usize {
    lab.agent_log_json()
        .iter()
        .filter(|line| line["level"] == "ERROR" && line.to_string().contains(file))
        .count()
}

#[test]
fn malformed_manifest_edit_is_reported_and_ignored() {
    let manifests = Manifests::new();
    let lab = Lab::up(&[manifests.write("a.yaml", &cluster("a"))], UpOptions::default());
    let assert_unchanged = |when: &str| {
        assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "cross-tenant {when}");
        assert_eq!(lab.probe("x/p", "y/q", "80/TCP"), Verdict::Allowed, "same tenant {when}");
    };
    assert_unchanged("before");

    let broken = lab.manifests_dir().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: v1\nkind: Namespace\nmetadata: {name: [unclosed\n").unwrap();
    let line = lab.wait_log_line(|line| line.contains("\"ERROR\"") && line.contains("broken.yaml"), Duration::from_secs(10));
    assert!(line.is_ok(), "no error naming broken.yaml in the agent's log; tail:\n{}", line.unwrap_err());
    assert_unchanged("with a malformed file");

    // A relabel (y to tenant b) written while the malformed file is still there: the agent
    // reads the directory as a whole, rejects it again, and keeps the last good state.
    let before = rejections(&lab, "broken.yaml");
    lab.apply(&[manifests.write("b.yaml", &cluster("b"))]);
    let again = moat_integration::eventually(Duration::from_secs(10), || (rejections(&lab, "broken.yaml") > before).then_some(()));
    assert!(again.is_some(), "the agent did not re-read the manifests after the relabel:\n{}", lab.agent_log());
    assert_unchanged("after a relabel next to a malformed file");

    std::fs::remove_file(&broken).unwrap();
    wait_verdict("x/p -> y/q once the malformed file is gone", Verdict::Denied, Duration::from_secs(10), || {
        lab.probe("x/p", "y/q", "80/TCP")
    });
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied);
    assert_eq!(lab.probe("y/q", "z/r", "80/TCP"), Verdict::Allowed, "y and z are both tenant b now");
}

#[test]
fn lab_up_rejects_a_pod_ip_that_is_not_an_ip_and_leaves_nothing() {
    let manifests = Manifests::new();
    let mut pod = pod_yaml("x", "bad", &[], &[(80, "TCP")]);
    pod.push_str("status:\n  podIP: 10.0.0.300\n");
    let file = manifests.write(
        "bad-ip.yaml",
        &documents(&[namespace_yaml("x", &[("tenant", "a")]), pod_yaml("x", "good", &[], &[(80, "TCP")]), pod]),
    );
    let (lab, output) = Lab::try_up(&[&file], UpOptions::default());
    assert!(!output.success, "{output}");
    assert!(output.stderr.contains("bad-ip.yaml"), "names the file:\n{output}");
    assert!(output.stderr.contains("status.podIP"), "names the field:\n{output}");
    assert!(output.stderr.contains("x/bad"), "names the pod:\n{output}");
    assert_eq!(leftovers(lab.name()), Vec::<String>::new(), "lab up left things behind");
}
