//! One tenant's flood costs only that tenant. While a pod of tenant b makes denied connects
//! to distinct ports as fast as it can, every denied connect of tenant a (one a second) is
//! reported, and so is every detection a's pod triggers; b's excess is dropped in the kernel,
//! counted for b, reported in a `dropped` event, and its flood folded into counted reports.
//! Nothing here depends on how fast the machine is: the flood's own count says whether it
//! exceeded b's budget.

use std::process::{Command, Stdio};
use std::time::Duration;

use moat_integration::observe::Observer;
use moat_integration::{
    documents, eventually, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions, Verdict,
};

const DEADLINE: Duration = Duration::from_secs(60);
const QUIET_PROBES: u16 = 20;
const FLOOD_SECONDS: u64 = 25;
/// Tenant b's budget in the test: denies per second per CPU, and burst.
const RATE: u64 = 200;
const BURST: u64 = 200;
const WRITE_BACK: &str = "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern";

/// The agent's CPU time (user + system, clock ticks) and its resident and peak memory (KiB).
fn agent_usage(pid: i64) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

fn sum_counts<'a>(events: impl Iterator<Item = &'a serde_json::Value>) -> u64 {
    events.map(|e| e["count"].as_u64().unwrap_or(0)).sum()
}

#[test]
fn a_quiet_tenant_loses_no_events_while_another_floods() {
    let manifests = Manifests::new();
    let ports: &[(u16, &str)] = &[(80, "TCP")];
    let file = manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            namespace_yaml("b1", &[("tenant", "b")]),
            namespace_yaml("c1", &[("tenant", "c")]),
            pod_yaml("a1", "quiet", &[], ports),
            pod_yaml("b1", "noisy", &[], ports),
            pod_yaml("c1", "target", &[], ports),
        ]),
    );
    let config = manifests.write(
        "agent.yaml",
        &format!("events:\n  budget: {{tenantEventsPerSecond: {RATE}, tenantBurst: {BURST}}}\n"),
    );
    let lab = Lab::up(
        &[file],
        UpOptions {
            config: Some(config),
            ..UpOptions::default()
        },
    );
    let quiet = Observer::start(&["--lab", lab.name(), "--tenant", "a"]);
    let noisy = Observer::start(&["--lab", lab.name(), "--tenant", "b"]);
    let target = lab.pod_ip("c1/target", Family::V4).to_string();
    let agent = lab.status()["agent"]["pid"].as_i64().unwrap_or(0);
    let (ticks_before, _, _) = agent_usage(agent);
    let flood_start = std::time::Instant::now();

    let flood = Command::new(lab.moat())
        .args(["lab", "exec", "--name", lab.name(), "b1/noisy", "--"])
        .arg(lab.lab_bin())
        .args([
            "__pod-burst",
            "--protocol",
            "tcp",
            "--to",
            &target,
            "--port",
            "1024",
            "--ports",
            "60000",
        ])
        .args([
            "--count",
            &u64::MAX.to_string(),
            "--seconds",
            &FLOOD_SECONDS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the flood");
    // Under way once b's first denies are seen.
    let started = eventually(DEADLINE, || {
        noisy
            .events()
            .iter()
            .any(|e| e["type"] == "flow")
            .then_some(())
    });
    assert!(
        started.is_some(),
        "the flood's denies never arrived: {:?}",
        noisy.events()
    );

    let mut writes = 0u64;
    for i in 0..QUIET_PROBES {
        let port = format!("{}/TCP", 20_000 + i);
        assert_eq!(
            lab.probe("a1/quiet", "c1/target", &port),
            Verdict::Denied,
            "a1/quiet -> c1/target {port}"
        );
        let write = lab.exec("a1/quiet", &["sh", "-c", WRITE_BACK]);
        assert!(!write.success, "the core_pattern write is refused: {write}");
        writes += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let flood = flood.wait_with_output().expect("waiting for the flood");
    let flood_out = String::from_utf8_lossy(&flood.stdout).to_string();
    assert!(
        flood.status.success(),
        "flood: {flood_out}{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let flood_json: serde_json::Value =
        serde_json::from_str(flood_out.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("flood output {flood_out:?}: {e}"));
    let denied = flood_json["failed"].as_u64().unwrap_or(0);
    let (ticks_after, rss, peak) = agent_usage(agent);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks_after - ticks_before) as f64 / hz / flood_start.elapsed().as_secs_f64() * 100.0;
    eprintln!("flood: {flood_json}; agent during the flood: {cpu:.0}% of one CPU, RSS {} MiB (peak {} MiB)", rss / 1024, peak / 1024);

    // Every one of a's denies and detections arrives.
    let want: Vec<u64> = (0..u64::from(QUIET_PROBES)).map(|i| 20_000 + i).collect();
    let quiet_ports = |events: &[serde_json::Value]| {
        let mut ports: Vec<u64> = events
            .iter()
            .filter(|e| e["type"] == "flow" && e["src"]["pod"] == "quiet")
            .flat_map(|e| {
                std::iter::repeat_n(
                    e["dst"]["port"].as_u64().unwrap_or(0),
                    e["count"].as_u64().unwrap_or(0) as usize,
                )
            })
            .collect();
        ports.sort_unstable();
        ports
    };
    let arrived = eventually(DEADLINE, || {
        let events = quiet.events();
        let detections = sum_counts(events.iter().filter(|e| e["type"] == "detection"));
        (quiet_ports(&events) == want && detections >= writes).then_some(())
    });
    let events = quiet.events();
    assert!(arrived.is_some(), "every deny of a arrived once (got ports {:?}) and every detection ({writes} writes): {events:?}", quiet_ports(&events));
    assert!(
        !events.iter().any(|e| e["type"] == "dropped"),
        "nothing of a's was dropped: {events:?}"
    );

    let status: serde_json::Value = {
        let output = Command::new(lab.moat())
            .args(["status", "--lab", lab.name(), "-o", "json"])
            .output()
            .expect("moat status");
        serde_json::from_slice(&output.stdout).expect("status JSON")
    };
    let losses = status["events_lost"]["by_tenant"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !losses.iter().any(|loss| loss["tenant"] == "a"),
        "tenant a lost nothing: {losses:?}"
    );
    assert!(
        !losses.iter().any(|loss| loss["kind"] == "detection"),
        "no detection was lost: {losses:?}"
    );

    // What b's budget admits at most: the burst and the rate on each CPU.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let admissible = cpus * (BURST + RATE * (FLOOD_SECONDS + 5));
    if denied > admissible {
        assert!(
            losses.iter().any(|loss| loss["tenant"] == "b" && loss["stage"] == "kernel" && loss["reason"] == "over-budget"),
            "b's excess ({denied} denies, at most {admissible} admissible) is dropped in the kernel and counted for b: {losses:?}"
        );
        let reported = eventually(DEADLINE, || {
            let events = noisy.events();
            let dropped = sum_counts(
                events
                    .iter()
                    .filter(|e| e["type"] == "dropped" && e["tenant"] == "b"),
            );
            let folded = events.iter().any(|e| {
                e["type"] == "flow" && e["spread"]["remote_ports"].as_u64().unwrap_or(0) > 1
            });
            (dropped > 0 && folded).then_some(())
        });
        assert!(
            reported.is_some(),
            "b's losses are reported and its flood folded with its spread: {:?}",
            noisy.events().iter().rev().take(20).collect::<Vec<_>>()
        );
    } else {
        eprintln!(
            "the flood made {denied} denies, within b's budget of {admissible}: nothing to drop"
        );
    }
}
