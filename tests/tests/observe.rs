//! Observability through the lab: `moat observe` (filters, both ends named), `moat status`,
//! the admin socket's permissions, `/metrics` (checked by promtool) and `/readyz`, and an
//! overflowing ring buffer whose losses are counted and whose flood is aggregated.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use moat_integration::observe::Observer;
use moat_integration::{documents, http_get, eventually, namespace_yaml, pod_yaml, Family, Lab, Manifests, UpOptions};

const DEADLINE: Duration = Duration::from_secs(30);

/// Tenants a (a1/p1), b (b1/p2), c (c1/p3); every pod serves 80/TCP and 80/UDP.
fn three_tenants() -> (Manifests, PathBuf) {
    let ports: &[(u16, &str)] = &[(80, "TCP"), (80, "UDP")];
    let manifests = Manifests::new();
    let file = manifests.write(
        "cluster.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            namespace_yaml("b1", &[("tenant", "b")]),
            namespace_yaml("c1", &[("tenant", "c")]),
            pod_yaml("a1", "p1", &[], ports),
            pod_yaml("b1", "p2", &[], ports),
            pod_yaml("c1", "p3", &[], ports),
        ]),
    );
    (manifests, file)
}

/// `moat observe --lab NAME -o json ARGS...`.
fn observe(lab: &Lab, args: &[&str]) -> Observer {
    Observer::start(&[&["--lab", lab.name()], args].concat())
}

fn ends(event: &serde_json::Value) -> (String, String) {
    let name = |end: &serde_json::Value| format!("{}/{}", end["namespace"].as_str().unwrap_or("?"), end["pod"].as_str().unwrap_or("?"));
    (name(&event["src"]), name(&event["dst"]))
}

fn moat_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let output = Command::new(lab.moat()).args(args).output().expect("running moat");
    assert!(output.status.success(), "moat {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("moat {args:?} is not JSON ({e}): {stdout}"))
}


#[test]
fn observe_names_both_ends_and_filters_by_tenant_namespace_and_pod() {
    let (_manifests, file) = three_tenants();
    let lab = Lab::up(&[file], UpOptions::default());
    let mut all = observe(&lab, &["--verdict", "deny", "--max-events", "2"]);
    let mut by_tenant = observe(&lab, &["--tenant", "c", "--max-events", "1"]);
    let mut by_namespace = observe(&lab, &["--namespace", "c1", "--max-events", "1"]);
    let mut by_pod = observe(&lab, &["--pod", "c1/p3", "--max-events", "1"]);
    let mut allows = observe(&lab, &["--verdict", "allow", "--max-events", "1"]);
    // Probe a -> b, then c -> a, until every observer has what it waits for: observers
    // connect asynchronously, so the first rounds may come before they listen.
    let done = eventually(DEADLINE, || {
        lab.probe("a1/p1", "b1/p2", "80/TCP");
        lab.probe("c1/p3", "a1/p1", "80/TCP");
        (all.exited() && by_tenant.exited() && by_namespace.exited() && by_pod.exited()).then_some(())
    });
    assert!(done.is_some(), "observers did not all see their events; saw {:?}", all.events());

    let events = all.events();
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        assert_eq!(event["type"], "flow", "{event}");
        assert_eq!(event["verdict"], "deny", "{event}");
        assert_eq!(event["rule"], "tenant-floor", "{event}");
        for end in ["src", "dst"] {
            for field in ["tenant", "namespace", "pod"] {
                assert!(event[end][field].is_string(), "{end}.{field} is named: {event}");
            }
        }
    }
    let deny_ab = events.iter().find(|e| ends(e) == ("a1/p1".into(), "b1/p2".into()));
    let deny_ab = deny_ab.unwrap_or_else(|| panic!("a1/p1 -> b1/p2 among {events:?}"));
    assert_eq!((deny_ab["src"]["tenant"].as_str(), deny_ab["dst"]["tenant"].as_str()), (Some("a"), Some("b")));
    assert_eq!(deny_ab["dst"]["ip"].as_str(), Some(lab.pod_ip("b1/p2", Family::V4).to_string().as_str()));
    for (observer, what) in [(&by_tenant, "--tenant c"), (&by_namespace, "--namespace c1"), (&by_pod, "--pod c1/p3")] {
        let seen = observer.events();
        assert_eq!(seen.len(), 1, "{what}: {seen:?}");
        assert_eq!(ends(&seen[0]), ("c1/p3".into(), "a1/p1".into()), "{what} only sees c's flow: {seen:?}");
    }
    assert!(!allows.exited() && allows.events().is_empty(), "no allow events are reported: {:?}", allows.events());
}

#[test]
fn status_socket_metrics_and_readiness() {
    let (_manifests, file) = three_tenants();
    let lab = Lab::up(&[file], UpOptions::default());
    let status = moat_json(&lab, &["status", "--lab", lab.name(), "-o", "json"]);
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["sync"]["first_sync_done"], true, "{status}");
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<&str> = programs.iter().filter_map(|p| p["program"].as_str()).collect();
    let mut expected: Vec<&str> = moat_agent::kernel::loader::PROGRAMS.iter().map(|(name, _)| *name).collect();
    // cgroup/connect_unix, loaded by hand: Linux 6.7+, as on these machines.
    expected.push(moat_agent::kernel::unix_connect::PROGRAM);
    // DNS isolation over TCP (sock_ops; its sk_msg program hangs off the map, not a link).
    expected.push(moat_agent::kernel::dns_tcp::SOCKOPS);
    names.sort_unstable();
    expected.sort_unstable();
    assert_eq!(names, expected, "every program: {status}");
    for program in &programs {
        assert_eq!((program["attached"].as_bool(), program["pinned"].as_bool()), (Some(true), Some(true)), "{program}");
    }
    assert_eq!(status["capabilities"]["btf"], true, "{status}");
    assert!(status["capabilities"]["bpf_lsm"].is_string(), "{status}");
    assert!(status["kernel"]["maps"].as_array().is_some_and(|maps| maps.iter().any(|m| m["map"] == "LOCAL_ENDPOINTS" && m["entries"] == 3)), "{status}");

    // The admin socket: root's, mode 0600.
    let socket = lab.run_dir().join("admin.sock");
    assert_eq!(status["admin_socket"].as_str(), Some(socket.to_str().unwrap_or_default()));
    let meta = std::fs::metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o600, 0, 0), "{}", socket.display());

    // /metrics passes promtool, /readyz is 200 once synced, /healthz 200.
    let url = status["metrics_url"].as_str().unwrap_or_else(|| panic!("no metrics URL: {status}"));
    let address = url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    assert_eq!(lab.probe("a1/p1", "b1/p2", "80/TCP"), moat_integration::Verdict::Denied);
    let (code, body) = http_get(&address, "/metrics");
    assert_eq!(code, 200, "{body}");
    // (Verdict counters need packets; a denied connect never sends one.)
    for name in [r#"moat_events_total{type="flow"}"#, "moat_events_lost_total", "moat_map_entries", "moat_sync_ready 1", "moat_policy_generation"] {
        assert!(body.contains(name), "{name} in /metrics:\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool (Debian package prometheus; `cargo xtask setup` installs it): {e}"));
    promtool.stdin.take().map(|mut stdin| stdin.write_all(body.as_bytes())).transpose().expect("feeding promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(http_get(&address, "/readyz").0, 200);
    assert_eq!(http_get(&address, "/healthz").0, 200);
}

/// Resumes a stopped process on drop, so a failing test never leaves the agent frozen.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn ring_buffer_overflow_is_counted_and_the_flood_aggregated() {
    let (manifests, file) = three_tenants();
    // No budget, and the whole ring open to flow events: the ring itself must overflow.
    let config = manifests.write(
        "agent.yaml",
        "events:\n  budget: {tenantEventsPerSecond: 0, flowRingPercent: 100}\n",
    );
    let lab = Lab::up(
        &[file],
        UpOptions {
            config: Some(config),
            ..UpOptions::default()
        },
    );
    let mut observer = observe(&lab, &["--pod", "a1/p1"]);
    let pid = lab.status()["agent"]["pid"].as_i64().unwrap_or_else(|| panic!("no agent pid: {}", lab.status())) as i32;
    let lost = |status: &serde_json::Value| status["events_lost"]["kernel"].as_u64().unwrap_or(0);
    let before = lost(&moat_json(&lab, &["status", "--lab", lab.name(), "-o", "json"]));
    let target = lab.pod_ip("b1/p2", Family::V4).to_string();
    let burst = |count: &str| {
        let lab_bin = lab.lab_bin();
        let output = lab.exec("a1/p1", &[lab_bin.to_str().unwrap_or("moat-lab"), "__pod-burst", "--to", &target, "--port", "80", "--count", count]);
        assert!(output.success, "{output}");
    };
    {
        // A stopped agent reads nothing: the ring buffer (4 MiB, ~47k events) must overflow.
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "stopping the agent");
        let _resume = Stopped(pid);
        burst("120000");
    }
    let status = eventually(DEADLINE, || {
        let status = moat_json(&lab, &["status", "--lab", lab.name(), "-o", "json"]);
        (lost(&status) > before).then_some(status)
    });
    let status = status.unwrap_or_else(|| panic!("events lost in the kernel did not rise above {before}"));
    assert!(lost(&status) >= 120_000 - 50_000, "most of the burst beyond the ring's size is lost: {status}");
    let aggregated = eventually(DEADLINE, || {
        observer.events().into_iter().find(|e| e["aggregated"] == true && e["count"].as_u64().unwrap_or(0) > 100)
    });
    let events = observer.events();
    let aggregated = aggregated.unwrap_or_else(|| panic!("no aggregated event with a large count: {events:?}"));
    assert_eq!(ends(&aggregated), ("a1/p1".into(), "b1/p2".into()), "{aggregated}");
    assert_eq!(aggregated["protocol"], "UDP", "{aggregated}");
    assert!(events.len() < 100, "the flood is aggregated, not reported one by one: {} events", events.len());
    assert!(!observer.exited(), "observer still following");
    let metrics_address = lab.status()["agent"]["metricsAddress"].as_str().map(String::from).unwrap_or_default();
    let (_, body) = http_get(&metrics_address, "/metrics");
    let kernel_lost = body
        .lines()
        .find(|l| l.starts_with(r#"moat_events_lost_total{stage="kernel",reason="ring-full",tenant="a",kind="deny"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        kernel_lost.is_some_and(|n| n > 0),
        "tenant a's kernel losses in /metrics:\n{body}"
    );
    let status = moat_json(&lab, &["status", "--lab", lab.name(), "-o", "json"]);
    let by_tenant = status["events_lost"]["by_tenant"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        by_tenant.iter().any(|loss| loss["reason"] == "ring-full")
            && by_tenant.iter().all(|loss| loss["tenant"] == "a"),
        "the full ring lost events, all of them tenant a's: {}",
        status["events_lost"]
    );
}

#[test]
fn allowed_flows_are_reported_when_asked_for() {
    let manifests = Manifests::new();
    let file = manifests.write(
        "allow.yaml",
        &documents(&[
            namespace_yaml("a1", &[("tenant", "a")]),
            pod_yaml("a1", "p1", &[("app", "p1")], &[(80, "TCP")]),
            pod_yaml("a1", "p2", &[("app", "p2")], &[(80, "TCP")]),
        ]),
    );
    let config = manifests.write("agent.yaml", "events:\n  reportAllowedFlows: true\n");
    let lab = Lab::up(&[file], UpOptions { config: Some(config), ..UpOptions::default() });
    let mut allows = observe(&lab, &["--verdict", "allow", "--max-events", "1"]);
    let done = eventually(DEADLINE, || {
        lab.probe("a1/p1", "a1/p2", "80/TCP");
        allows.exited().then_some(())
    });
    assert!(done.is_some(), "no allow event seen: {:?}", allows.events());
    let event = &allows.events()[0];
    assert_eq!(event["verdict"], "allow", "{event}");
    assert_eq!(event["rule"], "same-tenant", "{event}");
    assert_eq!(event["src"]["tenant"], "a", "{event}");
}
