//! Killing the agent (SIGKILL) leaves enforcement in place (pinned programs and maps); a
//! restarted agent adopts the pinned state and replaces the links without a gap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_integration::{documents, eventually, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict};

/// Link pins are named `<program>@<timestamp>`: how many pins each program has.
fn links_per_program(lab: &Lab) -> BTreeMap<String, usize> {
    let dir = lab.pin_dir().join(format!("v{}/links", moat_common::LAYOUT_VERSION));
    let mut count = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let program = name.split('@').next().unwrap_or_default().to_string();
        *count.entry(program).or_insert(0) += 1;
    }
    count
}

#[test]
fn enforcement_survives_agent_kill_and_restart_adopts_it() {
    let manifests = Manifests::new();
    let lab = Lab::up(
        &[manifests.write(
            "cluster.yaml",
            &documents(&[
                namespace_yaml("x", &[("tenant", "a")]),
                namespace_yaml("z", &[("tenant", "b")]),
                pod_yaml("x", "p", &[], &[(80, "TCP")]),
                pod_yaml("x", "q", &[], &[(80, "TCP")]),
                pod_yaml("z", "r", &[], &[(80, "TCP")]),
            ]),
        )],
        UpOptions::default(),
    );
    let programs_before = links_per_program(&lab);
    assert!(!programs_before.is_empty() && programs_before.values().all(|n| *n == 1), "{programs_before:?}");
    let mut held = lab.hold("x/p", "x/q", 80, Family::V4);
    held.ping().expect("held same-tenant connection");

    // Cross-tenant probes, back to back, over the whole kill/restart window.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stop = Arc::clone(&stop);
        let lab_name = lab.name().to_string();
        let moat = lab.moat().to_path_buf();
        std::thread::spawn(move || {
            let mut verdicts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let output = std::process::Command::new(&moat)
                    .args(["lab", "probe", "--name", &lab_name, "--from", "x/p", "--to", "z/r", "--port", "80", "-o", "json"])
                    .output()
                    .expect("running lab probe");
                verdicts.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
            }
            verdicts
        })
    };

    lab.agent_kill();
    assert_eq!(lab.status()["agent"], serde_json::Value::Null, "the agent is gone");
    held.ping().expect("held connection while the agent is dead");
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "cross-tenant, agent dead");
    assert_eq!(lab.probe("z/r", "x/q", "80/TCP"), Verdict::Denied, "cross-tenant, agent dead");
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Allowed, "same tenant, agent dead");

    lab.agent_start();
    held.ping().expect("held connection after the restart");
    assert_eq!(lab.probe("x/p", "z/r", "80/TCP"), Verdict::Denied, "cross-tenant after restart");
    assert_eq!(lab.probe("x/q", "x/p", "80/TCP"), Verdict::Allowed, "same tenant after restart");

    stop.store(true, Ordering::Relaxed);
    let verdicts = background.join().expect("the background prober");
    assert!(verdicts.len() >= 3, "too few background probes: {verdicts:?}");
    let allowed: Vec<&String> = verdicts.iter().filter(|v| !v.contains("\"verdict\":\"deny\"")).collect();
    assert!(allowed.is_empty(), "cross-tenant probes not denied during kill/restart: {allowed:?}");

    // The restarted agent adopted the pinned maps' content...
    let enforcing: Vec<serde_json::Value> =
        lab.agent_log_json().into_iter().filter(|line| line["message"] == "enforcing").collect();
    assert_eq!(enforcing.len(), 2, "one `enforcing` line per agent start: {enforcing:?}");
    let adopted = enforcing[1]["adopted_entries"].as_u64();
    assert!(adopted.is_some_and(|n| n > 0), "restarted agent adopted nothing: {}", enforcing[1]);
    // ...and replaced the links: exactly one pin per program, the same programs as before.
    let settled = eventually(Duration::from_secs(10), || {
        let now = links_per_program(&lab);
        (now == programs_before).then_some(())
    });
    assert!(settled.is_some(), "link pins {:?}, want one each of {programs_before:?}", links_per_program(&lab));
}
