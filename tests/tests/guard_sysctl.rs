//! Runtime guard, `escape.kernel-sysctl`: a pod writing the host's `kernel/core_pattern` is
//! refused with EPERM in block mode (the default) and reported in detect mode, with the pod,
//! namespace and tenant named; reading it, and writing the pod's own namespaced sysctls, stay
//! silent. Every write puts back the value just read, and the host's value is checked
//! unchanged afterwards: lab pods share the host's /proc, and core_pattern is not namespaced.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use moat_integration::observe::Observer;
use moat_integration::{documents, eventually, namespace_yaml, pod_yaml, Lab, Manifests, UpOptions};

const DEADLINE: Duration = Duration::from_secs(30);
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const WRITE_BACK: &str = "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern";
const OWN_SYSCTL: &str = "cat /proc/sys/net/ipv4/ip_local_port_range > /proc/sys/net/ipv4/ip_local_port_range";

/// Tenant a (a1/bad, a1/quiet).
fn cluster(manifests: &Manifests) -> PathBuf {
    manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            pod_yaml("a1", "bad", &[], &[]),
            pod_yaml("a1", "quiet", &[], &[]),
        ]),
    )
}

fn host_core_pattern() -> String {
    std::fs::read_to_string(CORE_PATTERN).expect("reading the host's core_pattern")
}

/// `moat observe --lab NAME -o json --detection escape.kernel-sysctl`.
fn observe(lab: &Lab) -> Observer {
    Observer::start(&["--lab", lab.name(), "--detection", "escape.kernel-sysctl"])
}

/// Runs `attempt` until the observer has seen a detection (it connects asynchronously, so
/// the first attempts may come before it listens); returns the detections and the last run.
fn write_until_seen(lab: &Lab, observer: &Observer) -> (Vec<serde_json::Value>, moat_integration::Output) {
    let mut last = None;
    let seen = eventually(DEADLINE, || {
        last = Some(lab.exec("a1/bad", &["sh", "-c", WRITE_BACK]));
        let events = observer.events();
        (!events.is_empty()).then_some(events)
    });
    let last = last.expect("the write ran at least once");
    let seen = seen.unwrap_or_else(|| panic!("no detection seen; last write:\n{last}\nagent log:\n{}", lab.agent_log()));
    (seen, last)
}

fn assert_names_the_pod(event: &serde_json::Value, action: &str, mode: &str) {
    assert_eq!(event["type"], "detection", "{event}");
    assert_eq!(event["id"], "escape.kernel-sysctl", "{event}");
    assert_eq!(event["severity"], "critical", "{event}");
    assert_eq!(event["action"], action, "{event}");
    assert_eq!(event["mode"], mode, "{event}");
    assert_eq!(event["tenant"], "a", "{event}");
    assert_eq!(event["namespace"], "a1", "{event}");
    assert_eq!(event["pod"], "bad", "{event}");
    assert_eq!(event["evidence"], CORE_PATTERN, "{event}");
    assert!(event["pid"].as_u64().is_some_and(|pid| pid > 0), "{event}");
    assert!(event["executable"].is_string(), "{event}");
}

#[test]
fn block_mode_refuses_core_pattern_and_stays_silent_on_reads_and_own_sysctls() {
    moat_integration::require_root();
    let before = host_core_pattern();
    let manifests = Manifests::new();
    let lab = Lab::up(&[cluster(&manifests)], UpOptions::default());
    let output = Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("moat status");
    assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("moat status prints JSON");
    let detections = status["detections"]["configured"].as_array().cloned().unwrap_or_default();
    let sysctl = detections.iter().find(|d| d["id"] == "escape.kernel-sysctl");
    let sysctl = sysctl.unwrap_or_else(|| panic!("status lists the detection: {status}"));
    assert_eq!((sysctl["configured"].as_str(), sysctl["effective"].as_str()), (Some("block"), Some("block")), "{status}");

    let observer = observe(&lab);
    // Normal activity first: nothing may be reported for it.
    lab.exec("a1/quiet", &["cat", CORE_PATTERN]).ok();
    lab.exec("a1/quiet", &["sh", "-c", OWN_SYSCTL]).ok();
    let (seen, last) = write_until_seen(&lab, &observer);
    assert!(!last.success && last.stderr.contains("Operation not permitted"), "the write is refused:\n{last}");
    for event in &seen {
        assert_names_the_pod(event, "blocked", "block");
    }
    assert_eq!(host_core_pattern(), before, "the host's core_pattern is unchanged");
    let log = lab.agent_log();
    assert!(log.contains("\"detection\":\"escape.kernel-sysctl\",\"mode\":\"block\""), "start-up says it can block:\n{log}");
    assert!(!log.contains("\"pod\":\"quiet\""), "the quiet pod is never reported:\n{log}");
}

#[test]
fn detect_mode_reports_and_lets_the_write_through() {
    moat_integration::require_root();
    let before = host_core_pattern();
    let manifests = Manifests::new();
    let config = manifests.write("moat.yaml", "guard:\n  detections:\n    escape.kernel-sysctl: detect\n");
    let lab = Lab::up(&[cluster(&manifests)], UpOptions { config: Some(config), ..UpOptions::default() });
    let observer = observe(&lab);
    let (seen, last) = write_until_seen(&lab, &observer);
    assert!(last.success, "the write goes through in detect mode:\n{last}");
    for event in &seen {
        assert_names_the_pod(event, "detected", "detect");
    }
    assert_eq!(host_core_pattern(), before, "the host's core_pattern is unchanged");
}
