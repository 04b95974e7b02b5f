//! ICMP echo into a pod is decided on the pod's own interfaces (tc ingress): the pod's kernel
//! answers an echo request without a socket, out of reach of the cgroup hooks. Here x/q is
//! isolated for ingress and nothing may reach it, while x/p's egress is open: only the program
//! on x/q's interface can stop p's pings. Its links survive the agent and are adopted (not
//! duplicated) by the next one, pods created later get it, a gone pod's pins go with it, and
//! the netlink fallback does the same.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use moat_integration::netpol::policy;
use moat_integration::{documents, eventually, namespace_yaml, pod_yaml, wait_verdict, Family, Lab, Manifests, UpOptions, Verdict};

const SETTLE: Duration = Duration::from_secs(15);

fn client() -> String {
    pod_yaml("x", "p", &[("role", "client")], &[(80, "TCP")])
}

fn db() -> String {
    pod_yaml("x", "q", &[("role", "db")], &[(80, "TCP")])
}

fn base() -> Vec<String> {
    vec![
        namespace_yaml("x", &[("tenant", "a")]),
        policy("x", "db-isolated", "  podSelector: {matchLabels: {role: db}}\n  policyTypes: [Ingress]\n"),
    ]
}

fn up(manifests: &Manifests, docs: &[String], config: &str) -> Lab {
    let file = manifests.write("cluster.yaml", &documents(docs));
    let config = manifests.write("moat.yaml", config);
    Lab::up(&[file], UpOptions { config: Some(config), ..UpOptions::default() })
}

/// p cannot ping q (q isolated for ingress), q can ping p, over both families.
fn assert_enforced(lab: &Lab, when: &str) {
    for family in Family::BOTH {
        assert_eq!(lab.probe_family("x/p", "x/q", "icmp", family), Verdict::Denied, "{when}: p -> q {family:?}");
        assert_eq!(lab.probe_family("x/q", "x/p", "icmp", family), Verdict::Allowed, "{when}: q -> p {family:?}");
    }
}

fn status(lab: &Lab) -> serde_json::Value {
    let output = Command::new(lab.moat()).args(["status", "--lab", lab.name(), "-o", "json"]).output().expect("moat status");
    assert!(output.status.success(), "moat status: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("moat status prints JSON")
}

/// The pins of pod `ns/name`'s links: `<netns inode>-<ifindex>`.
fn pins(lab: &Lab, pod: &str) -> Vec<String> {
    let dir = tc_dir(lab).join(pod);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn tc_dir(lab: &Lab) -> PathBuf {
    lab.pin_dir().join(format!("v{}/tc", moat_common::LAYOUT_VERSION))
}

/// The agent's "ICMP program attached" lines for `pod`.
fn attach_lines(lab: &Lab, pod: &str) -> Vec<serde_json::Value> {
    lab.agent_log_json()
        .into_iter()
        .filter(|line| line["message"] == "ICMP program attached" && line["pod"] == pod)
        .collect()
}

/// A lab with p and q under an agent configured with `config`; checks that the program is on
/// both pods, attached the way `mode` says, and enforces.
fn up_with_both(manifests: &Manifests, config: &str, mode: &str) -> Lab {
    let mut docs = base();
    docs.extend([client(), db()]);
    let lab = up(manifests, &docs, config);
    assert_enforced(&lab, mode);
    let icmp = &status(&lab)["icmp"];
    assert_eq!((icmp["mode"].as_str(), icmp["pods_attached"].as_u64()), (Some(mode), Some(2)), "{icmp}");
    assert_eq!(icmp["attach_failures"], 0, "{icmp}");
    lab
}

/// Kills the agent, checks that enforcement stays, starts a new one, checks that it adopted
/// q's attachment (rather than creating another) and still enforces.
fn restart_adopts(lab: &Lab, mode: &str) {
    lab.agent_kill();
    assert_enforced(lab, &format!("{mode}, agent dead"));
    lab.agent_start();
    assert_enforced(lab, &format!("{mode}, restarted agent"));
    let lines = attach_lines(lab, "x/q");
    assert_eq!(lines.len(), 2, "one attach line per agent: {lines:?}");
    assert_eq!((lines[1]["adopted"].as_str(), lines[1]["created"].as_str()), (Some("[\"eth0\"]"), Some("[]")), "{}", lines[1]);
}

#[test]
fn restarted_agent_adopts_the_links_and_keeps_denying() {
    let manifests = Manifests::new();
    let lab = up_with_both(&manifests, "{}\n", "tcx");
    // The deny is reported like any other, naming the pod it protects.
    let event = lab.wait_log_line(
        |line| line.contains("\"message\":\"deny\"") && line.contains("\"protocol\":\"ICMP\"") && line.contains("\"dst_pod\":\"q\""),
        Duration::from_secs(5),
    );
    let event: serde_json::Value = serde_json::from_str(&event.unwrap_or_else(|tail| panic!("no ICMP deny event for x/q:\n{tail}"))).unwrap();
    assert_eq!((event["rule"].as_str(), event["hook"].as_str()), (Some("network-policy-ingress"), Some("packet")), "{event}");
    assert_eq!((event["direction"].as_str(), event["src_pod"].as_str()), (Some("ingress"), Some("p")), "{event}");
    let before = pins(&lab, "x/q");
    assert_eq!(before.len(), 1, "one link for q's one interface: {before:?}");
    restart_adopts(&lab, "tcx");
    assert_eq!(pins(&lab, "x/q"), before, "the restarted agent keeps the same pinned link, no second one");
}

#[test]
fn a_pod_created_after_the_agent_started_gets_the_program_and_takes_its_pins_when_gone() {
    let manifests = Manifests::new();
    let mut docs = base();
    docs.push(client());
    let lab = up(&manifests, &docs, "{}\n");
    assert_eq!(status(&lab)["icmp"]["pods_attached"], 1);

    docs.push(db());
    lab.apply(&[manifests.write("with-db.yaml", &documents(&docs))]);
    for family in Family::BOTH {
        wait_verdict(&format!("p -> new pod q, {family:?}"), Verdict::Denied, SETTLE, || lab.probe_family("x/p", "x/q", "icmp", family));
    }
    assert_enforced(&lab, "after q was created");
    assert_eq!(status(&lab)["icmp"]["pods_attached"], 2);
    assert_eq!(pins(&lab, "x/q").len(), 1);

    docs.pop();
    lab.apply(&[manifests.write("without-db.yaml", &documents(&docs))]);
    let gone = eventually(SETTLE, || (!tc_dir(&lab).join("x/q").exists() && status(&lab)["icmp"]["pods_attached"] == 1).then_some(()));
    assert!(gone.is_some(), "q's pins outlived it: {:?}; status {}", pins(&lab, "x/q"), status(&lab)["icmp"]);
    assert_eq!(pins(&lab, "x/p").len(), 1, "p keeps its link");
}

#[test]
fn the_netlink_fallback_enforces_and_is_replaced_in_place_on_restart() {
    let manifests = Manifests::new();
    let lab = up_with_both(&manifests, "tcAttach: netlink\n", "netlink");
    assert!(pins(&lab, "x/q").is_empty(), "netlink filters are not pinned");
    restart_adopts(&lab, "netlink");
}
