//! The runtime guard as the DaemonSet runs it: the agent in a mount namespace of its own,
//! where the node's files are not at their paths, reading them below `guard.hostRoot` (the
//! node's `/`, mounted read-only with host-to-container propagation; `moat lab up
//! --agent-container`), and with only the capabilities deploy/daemonset.yaml grants. The
//! credential and runtime techniques of `guard_credentials` are performed from lab pods
//! again, and every event names the node's path.

use std::path::{Path, PathBuf};

use moat_integration::guard::{assert_detection, GuardLab, PodSpec, Probes, HOST_BIN, HOST_KUBELET, HOST_RUN};
use moat_integration::{eventually, Output};

const TENANTS: &[(&str, &str)] = &[("alpha", "alpha"), ("beta", "beta")];

/// A pod's open or connect: refused with EPERM where the guard's hook can refuse it.
fn refused_if(output: &Output, refused: bool) {
    if refused {
        assert!(!output.success && output.stdout.contains("EPERM"), "refused:\n{output}");
    } else {
        assert!(output.success || output.signal == Some(9), "through (reported only), or killed:\n{output}");
    }
}

/// deploy/daemonset.yaml's agent capabilities (`drop: [ALL]`, then `add`) as a mask.
fn daemonset_capabilities() -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let daemonset: serde_yaml::Value = serde_yaml::from_str(&text).expect("daemonset.yaml is YAML");
    let containers = daemonset["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
    let agent = containers.iter().find(|c| c["name"] == "agent").expect("an `agent` container");
    let capabilities = &agent["securityContext"]["capabilities"];
    assert_eq!(capabilities["drop"], serde_yaml::Value::from(vec!["ALL"]), "{capabilities:?}");
    // linux/capability.h.
    let number = |name: &str| match name {
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its number here"),
    };
    let add = capabilities["add"].as_sequence().expect("capabilities.add");
    add.iter().map(|c| 1u64 << number(c.as_str().expect("a name"))).fold(0, |mask, bit| mask | bit)
}

/// `CapEff`, `CapBnd` of process `pid`.
fn capabilities_of(pid: u64) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        u64::from_str_radix(line.trim(), 16).expect("hex")
    };
    (field("CapEff:"), field("CapBnd:"))
}

#[test]
fn from_the_daemonsets_mount_layout_the_guard_finds_and_protects_the_nodes_files() {
    let mut g = GuardLab::up_in_container(TENANTS, &[PodSpec::new("alpha", "spy").host_paths().host_pid(), PodSpec::new("beta", "web")]);
    let node = g.lab.node();
    let log = || g.lab.agent_log();

    // The agent cannot reach the node's files at their own paths: only below its host root.
    let agent = g.lab.status()["agent"]["pid"].as_u64().expect("the agent's pid in the lab's status");
    let own_view = PathBuf::from(format!("/proc/{agent}/root")).join(node.root.strip_prefix("/").expect("absolute"));
    let hidden: Vec<_> = std::fs::read_dir(&own_view).expect("the agent's view of the node tree").flatten().map(|e| e.file_name()).collect();
    assert!(hidden.is_empty(), "the node tree is hidden from the agent at {}: {hidden:?}", own_view.display());
    let namespace = |pid: u64| std::fs::metadata(format!("/proc/{pid}/ns/cgroup")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    assert_ne!(namespace(agent), namespace(u64::from(std::process::id())), "the agent has a cgroup namespace of its own");
    // Of those, what this machine's bounding set holds (here: all but SYS_RESOURCE).
    let granted = daemonset_capabilities() & capabilities_of(u64::from(std::process::id())).1;
    assert_eq!(capabilities_of(agent), (granted, granted), "the agent holds exactly the DaemonSet's capabilities");

    let files = g.status()["detections"]["node_files"].clone();
    assert_eq!(files["host_root"].as_str().map(Path::new), Some(g.lab.run_dir().join("host").as_path()), "{files}");
    assert_eq!(files["missing"], serde_json::json!([]), "every node path is found below the host root: {files}\nagent log:\n{}", log());
    assert!(files["warning"].is_null(), "{files}");
    assert!(files["pod_volumes"].as_u64().is_some_and(|n| n >= 3), "each pod's token volume, by superblock: {files}");

    let probes = Probes::of(&g);
    let via_alias = |path: &Path| format!("{HOST_KUBELET}/{}", path.strip_prefix(&node.kubelet_root).expect("below the kubelet root").display());

    // The kubelet's certificate through the rotation link, whose target is an absolute node
    // path: named by the dated file's node path.
    let current = std::fs::canonicalize(g.lab.current_cert()).expect("current certificate");
    refused_if(&g.attack("alpha/spy", &["open", &via_alias(&g.lab.current_cert()), "--read-bytes", "16"]), probes.refuses("file-open"));
    let event = g.expect("the current certificate", |e| e["id"] == "cred.kubelet-pki" && e["evidence"] == current.display().to_string());
    assert_detection(&event, "cred.kubelet-pki", "alpha/spy", "alpha", probes.action("file-open"));

    // The runtime binary opened for writing.
    refused_if(&g.attack("alpha/spy", &["open", &format!("{HOST_BIN}/runc"), "--write"]), probes.refuses("file-open"));
    let event = g.expect("the runtime binary opened for writing", |e| e["id"] == "escape.runtime-binary");
    assert_detection(&event, "escape.runtime-binary", "alpha/spy", "alpha", probes.action("file-open"));
    assert_eq!(event["evidence"], g.lab.runtime_binary().display().to_string(), "{event}");

    // The runtime socket through the pod's alias: refused by inode (BPF LSM) or by the path
    // cgroup/connect_unix was given, which the agent found from the socket below its root.
    let by_path = g.status()["capabilities"]["cgroup_connect_unix"] == "attached";
    let connect = g.attack("alpha/spy", &["connect-unix", &format!("{HOST_RUN}/containerd/containerd.sock")]);
    refused_if(&connect, probes.refuses("unix-connect") || by_path);
    let event = g.expect("the runtime socket reached", |e| e["id"] == "escape.runtime-socket");
    assert!(event["evidence"].as_str().is_some_and(|v| v.contains(&g.lab.runtime_socket().display().to_string())), "{event}\nagent log:\n{}", log());

    // A pod started now: its token volume is mounted on the host after the agent started, and
    // reaches the agent's mount namespace only by propagation.
    g.add_pods(&[PodSpec::new("beta", "late")]);
    let token = g.lab.pod_token_volume("beta/late").join("token");
    let theirs = format!("/proc/{}/root{}", g.lab.kubelet_pid(), token.display());
    let late = |e: &serde_json::Value| e["id"] == "cred.other-pod-volume" && e["evidence"].as_str().is_some_and(|v| v.contains("volume of pod beta/late"));
    let seen = eventually(std::time::Duration::from_secs(10), || {
        g.attack("alpha/spy", &["open", &theirs, "--read-bytes", "8"]);
        g.observer.matching(late).into_iter().next()
    });
    let event = seen.unwrap_or_else(|| panic!("beta/late's token read by alpha/spy was never reported; agent log:\n{}", g.lab.agent_log()));
    assert_detection(&event, "cred.other-pod-volume", "alpha/spy", "alpha", probes.action("file-open"));
}
