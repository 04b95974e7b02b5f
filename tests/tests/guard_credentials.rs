//! Runtime guard, credentials and the container runtime: the kubelet's certificate, key and
//! kubeconfigs (matched by inode, following rotation), other pods' volumes (by superblock),
//! the runtime's binary and socket, kubelet API ports, and a host process that reads the
//! kubelet's key and then reaches the API server. Every technique is performed from a lab
//! pod through a hostPath alias of the node (`/host/...`), as an escaped tenant would; the
//! legitimate actors (the stand-in kubelet, a pod on its own volumes) stay silent.

use std::path::Path;
use std::process::Command;

use moat_integration::guard::{assert_detection, GuardLab, PodSpec, Probes, HOST_BIN, HOST_KUBELET, HOST_RUN};
use moat_integration::Output;
use moat_integration::kube::ApiServer;
use moat_integration::{eventually, Family};

const TENANTS: &[(&str, &str)] = &[("alpha", "alpha"), ("beta", "beta")];

fn lab(config: Option<&str>) -> GuardLab {
    GuardLab::up(TENANTS, &[PodSpec::new("alpha", "spy").host_paths(), PodSpec::new("beta", "web")], config, None)
}

/// The node path `path` as pod `alpha/spy` sees it through its hostPath of the kubelet root.
fn via_alias(g: &GuardLab, path: &Path) -> String {
    let rel = path.strip_prefix(g.lab.kubelet_root()).unwrap_or_else(|_| panic!("{} is below the kubelet root", path.display()));
    format!("{HOST_KUBELET}/{}", rel.display())
}

/// A pod's open: refused with EPERM where BPF LSM sees opens, through otherwise.
fn opened(output: &Output, refused: bool) {
    if refused {
        assert!(!output.success && output.stdout.contains("EPERM"), "BPF LSM refuses the open:\n{output}");
    } else {
        assert!(output.success, "the open goes through (reported only):\n{output}");
    }
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn kubelet_credentials_are_matched_by_inode_through_rotation_and_the_kubelet_is_silent() {
    let g = lab(None);
    let probes = Probes::of(&g);
    let (refused, action) = (probes.refuses("file-open"), probes.action("file-open"));
    let pki = g.lab.pki_dir();
    let current = std::fs::canonicalize(g.lab.current_cert()).expect("current certificate");

    // The kubelet reading its own credentials is normal.
    let quiet = g.during(|| g.lab.kubelet_read());
    assert!(quiet.is_empty(), "the kubelet reading its credentials was reported: {quiet:#?}");

    // A pod reading them through its hostPath alias: reported, naming the dated file.
    let link = via_alias(&g, &g.lab.current_cert());
    opened(&g.attack("alpha/spy", &["open", &link, "--read-bytes", "16"]), refused);
    let event = g.expect("the current certificate read through the alias", |e| {
        e["id"] == "cred.kubelet-pki" && e["evidence"] == current.display().to_string()
    });
    assert_detection(&event, "cred.kubelet-pki", "alpha/spy", "alpha", action);
    assert_eq!(event["severity"], "critical", "{event}");

    let key = via_alias(&g, &pki.join("kubelet.key"));
    opened(&g.attack("alpha/spy", &["open", &key]), refused);
    g.expect("the serving key", |e| e["id"] == "cred.kubelet-pki" && e["evidence"].as_str().is_some_and(|p| p.ends_with("kubelet.key")));
    let kubeconfig = format!("{HOST_KUBELET}/kubeconfig");
    opened(&g.attack("alpha/spy", &["open", &kubeconfig]), refused);
    g.expect("the kubelet's kubeconfig", |e| e["id"] == "cred.kubelet-pki" && e["evidence"].as_str().is_some_and(|p| p.ends_with("var/lib/kubelet/kubeconfig")));

    // Rotation: the new dated file is protected as soon as the agent has seen it, reached
    // through the same `-current` link; the kubelet reading it stays silent.
    let rotated = std::fs::canonicalize(g.lab.kubelet_rotate()).expect("rotated certificate");
    assert_ne!(rotated, current);
    let seen = eventually(moat_integration::guard::DEADLINE, || {
        g.attack("alpha/spy", &["open", &link]);
        g.observer
            .matching(|e| e["id"] == "cred.kubelet-pki" && e["evidence"] == rotated.display().to_string())
            .into_iter()
            .next()
    });
    let seen = seen.unwrap_or_else(|| panic!("the rotated certificate was never reported; agent log:\n{}", g.lab.agent_log()));
    assert_detection(&seen, "cred.kubelet-pki", "alpha/spy", "alpha", action);
    // The loop's later opens may still be on their way: let them all in before the window.
    g.marker();
    let quiet = g.during(|| g.lab.kubelet_read());
    assert!(quiet.is_empty(), "the kubelet reading its rotated credentials was reported: {quiet:#?}");
}

#[test]
fn a_pod_reading_another_pods_volume_is_reported_and_its_own_is_not() {
    let g = lab(None);
    let theirs = g.lab.pod_token_volume("beta/web").join("token");
    let mine = g.lab.pod_token_volume("alpha/spy").join("token");
    assert_ne!(std::fs::metadata(&theirs).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok(), std::fs::metadata(&mine).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok(), "each volume is its own tmpfs");

    let quiet = g.during(|| {
        g.attack("alpha/spy", &["open", "/var/run/secrets/kubernetes.io/serviceaccount/token", "--read-bytes", "8"]).ok();
        g.attack("alpha/spy", &["open", &via_alias(&g, &mine), "--read-bytes", "8"]).ok();
        g.attack("beta/web", &["open", "/var/run/secrets/kubernetes.io/serviceaccount/token", "--read-bytes", "8"]).ok();
    });
    assert!(quiet.is_empty(), "a pod reading its own token was reported: {quiet:#?}");

    let probes = Probes::of(&g);
    opened(&g.attack("alpha/spy", &["open", &via_alias(&g, &theirs), "--read-bytes", "8"]), probes.refuses("file-open"));
    let event = g.expect("beta/web's token read by alpha/spy", |e| e["id"] == "cred.other-pod-volume");
    assert_detection(&event, "cred.other-pod-volume", "alpha/spy", "alpha", probes.action("file-open"));
    let evidence = event["evidence"].as_str().unwrap_or_default();
    assert!(evidence.contains("token") && evidence.contains("volume of pod beta/web"), "{event}");
}

/// A pod that starts while the agent runs: its token volume, a tmpfs mounted after the
/// agent's last scan of the node, is protected once the agent sees the pod or the mount. Read
/// by an escaped pod through the host's mount namespace (`/proc/<host pid>/root`), which sees
/// mounts made after the pod started; its hostPath view of the node does not.
#[test]
fn a_pod_started_while_the_agent_runs_has_its_volume_protected() {
    let mut g = GuardLab::up(TENANTS, &[PodSpec::new("alpha", "spy").host_pid(), PodSpec::new("beta", "web")], None, None);
    g.add_pods(&[PodSpec::new("beta", "late")]);
    let token = g.lab.pod_token_volume("beta/late").join("token");
    let theirs = format!("/proc/{}/root{}", g.lab.kubelet_pid(), token.display());
    let late = |e: &serde_json::Value| {
        e["id"] == "cred.other-pod-volume" && e["evidence"].as_str().is_some_and(|v| v.contains("volume of pod beta/late"))
    };
    let mut last = None;
    let seen = eventually(std::time::Duration::from_secs(10), || {
        last = Some(g.attack("alpha/spy", &["open", &theirs, "--read-bytes", "8"]));
        g.observer.matching(late).into_iter().next()
    });
    let event = seen.unwrap_or_else(|| {
        let last = last.map(|o| o.to_string()).unwrap_or_default();
        panic!("beta/late's token read by alpha/spy was never reported; the last read:\n{last}\nagent log:\n{}", g.lab.agent_log())
    });
    assert_detection(&event, "cred.other-pod-volume", "alpha/spy", "alpha", Probes::of(&g).action("file-open"));
}

#[test]
fn the_runtime_binary_is_matched_through_an_alias() {
    let g = lab(None);
    let binary = g.lab.runtime_binary();
    let before = sha(&binary);
    let runc = format!("{HOST_BIN}/runc");
    let quiet = g.during(|| {
        g.attack("alpha/spy", &["open", &runc, "--read-bytes", "4"]).ok();
    });
    assert!(quiet.is_empty(), "reading the runtime binary was reported: {quiet:#?}");

    let probes = Probes::of(&g);
    opened(&g.attack("alpha/spy", &["open", &runc, "--write"]), probes.refuses("file-open"));
    let event = g.expect("the runtime binary opened for writing", |e| e["id"] == "escape.runtime-binary");
    assert_detection(&event, "escape.runtime-binary", "alpha/spy", "alpha", probes.action("file-open"));
    assert_eq!(event["evidence"], binary.display().to_string(), "{event}");
    assert_eq!(sha(&binary), before, "the runtime binary is unchanged");
}

/// With BPF LSM, unix_stream_connect refuses every connect to the socket by its inode.
/// Without it, cgroup/connect_unix (Linux 6.7+) refuses every path the pod's mounts give it
/// to the socket; a path it cannot match (a symlink) — or any path, where that hook is
/// missing — gets through, and the process is killed before connect() returns. Detect mode
/// lets the connect through and reports it.
#[test]
fn a_pod_cannot_use_the_runtime_socket_by_any_path() {
    let g = lab(None);
    let probes = Probes::of(&g);
    let by_lsm = probes.refuses("unix-connect");
    let by_path = g.status()["capabilities"]["cgroup_connect_unix"] == "attached";
    let socket = g.lab.runtime_socket();
    let alias = format!("{HOST_RUN}/containerd/containerd.sock");
    let link = g.lab.node().root.join("tmp-runtime-link.sock");
    std::os::unix::fs::symlink(&socket, &link).expect("symlink to the runtime socket");
    let direct = socket.to_str().expect("UTF-8 path").to_string();
    // (pod, path, how the address names it, whether cgroup/connect_unix can match the path).
    // The kernel takes a path up to its NUL or the address length: an address without the
    // NUL, or with bytes after it, names the same socket and must be refused alike.
    let link = link.to_str().expect("UTF-8 path").to_string();
    let tries = [
        ("alpha/spy", alias.clone(), "terminated", true),
        ("beta/web", direct.clone(), "terminated", true),
        ("alpha/spy", alias.clone(), "unterminated", true),
        ("beta/web", direct, "padded", true),
        ("alpha/spy", link, "terminated", false),
    ];
    for (pod, path, form, matchable) in tries {
        let mut output = None;
        let seen = g.during(|| output = Some(g.attack(pod, &["connect-unix", &path, "--address", form])));
        let output = output.expect("the connect ran");
        let event = match seen.as_slice() {
            [one] => one.clone(),
            _ => panic!("{pod} connecting to {path} ({form}): one detection, got {seen:#?}\nagent log:\n{}", g.lab.agent_log()),
        };
        if by_lsm || (by_path && matchable) {
            assert!(!output.success && output.stdout.contains("EPERM"), "{path} ({form}) is refused:\n{output}\nagent log:\n{}", g.lab.agent_log());
            assert_detection(&event, "escape.runtime-socket", pod, pod.split_once('/').map(|(ns, _)| ns).unwrap_or(pod), "blocked");
            let want = if by_lsm { socket.display().to_string() } else { format!("{path} (runtime socket {})", socket.display()) };
            assert_eq!(event["evidence"], want, "{event}");
        } else {
            // The hook sees only the link's name: the connect succeeds and the process dies
            // before it can send the runtime anything.
            assert_eq!(output.signal, Some(9), "the process is killed:\n{output}");
            assert!(!output.stdout.contains("connected"), "it never returned from connect():\n{output}");
            assert_detection(&event, "escape.runtime-socket", pod, pod.split_once('/').map(|(ns, _)| ns).unwrap_or(pod), "killed");
            assert_eq!(event["evidence"], socket.display().to_string(), "{event}");
        }
    }
    drop(g);

    let g = lab(Some("guard:\n  detections:\n    escape.runtime-socket: detect\n"));
    let through = g.attack("alpha/spy", &["connect-unix", &alias]).ok();
    assert!(through.stdout.contains("connected"), "detect mode lets the connect through:\n{through}");
    let event = g.expect("the runtime socket reached", |e| e["id"] == "escape.runtime-socket");
    assert_detection(&event, "escape.runtime-socket", "alpha/spy", "alpha", "detected");
    assert_eq!(event["evidence"], g.lab.runtime_socket().display().to_string(), "{event}");
}

#[test]
fn pods_cannot_reach_kubelet_ports_in_block_mode_and_are_reported_in_detect_mode() {
    // The pod's own address: tenant and NetworkPolicy rules allow it, so only the guard
    // decides (nothing listens there, so a connect let through is refused by the peer).
    let g = lab(None);
    let target = g.lab.pod_ip("beta/web", Family::V4).to_string();
    let refused = g.attack("beta/web", &["connect-tcp", &target, "10250"]);
    assert!(!refused.success && refused.stdout.contains("EPERM"), "the connect is refused:\n{refused}");
    let event = g.expect("connect to 10250", |e| e["id"] == "cred.kubelet-api");
    assert_detection(&event, "cred.kubelet-api", "beta/web", "beta", "blocked");
    assert_eq!(event["evidence"], format!("{target}:10250"), "{event}");
    let quiet = g.during(|| {
        g.attack("alpha/spy", &["connect-tcp", &target, "80"]);
    });
    assert!(quiet.is_empty(), "an ordinary connect was reported: {quiet:#?}");
    drop(g);

    let g = lab(Some("guard:\n  detections:\n    cred.kubelet-api: detect\n"));
    let target = g.lab.pod_ip("beta/web", Family::V4).to_string();
    let through = g.attack("beta/web", &["connect-tcp", &target, "10255"]);
    assert!(!through.stdout.contains("EPERM"), "detect mode lets the connect through:\n{through}");
    let event = g.expect("connect to 10255", |e| e["id"] == "cred.kubelet-api");
    assert_detection(&event, "cred.kubelet-api", "beta/web", "beta", "detected");
}

#[test]
fn a_host_process_that_read_the_kubelet_key_is_reported_reaching_the_api_server() {
    let server = ApiServer::start(&[], 1);
    let url = server.url();
    let address = url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string();
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let config = format!("guard:\n  apiServers: [\"{address}\"]\n");
    // The stand-in kubelet reads its credentials and talks to the same API server: silent.
    let g = GuardLab::up(TENANTS, &[PodSpec::new("alpha", "spy")], Some(&config), Some(url.clone()));
    let quiet = g.during(|| g.lab.kubelet_read());
    assert!(quiet.is_empty(), "the kubelet was reported: {quiet:#?}");

    // A host shell reads the key itself (the redirect opens it in the shell), then becomes a
    // client of the API server: both steps are reported, neither names a pod.
    let key = g.lab.pki_dir().join("kubelet.key");
    let attack = moat_integration::guard::attack_bin();
    let script = format!("read -r line < {}; exec {} connect-tcp {host} {port}", key.display(), attack.display());
    let output = Command::new("sh").args(["-c", &script]).output().expect("host shell");
    assert!(output.status.success(), "the host process connects: {}", String::from_utf8_lossy(&output.stdout));
    let read = g.expect("the host process read the key", |e| e["id"] == "cred.kubelet-pki" && e["pod"].is_null());
    assert!(read["evidence"].as_str().is_some_and(|p| p.ends_with("kubelet.key")), "{read}");
    assert!(read["namespace"].is_null() && read["tenant"].is_null(), "a host process has no pod: {read}");
    let reached = g.expect("the host process reached the API server", |e| e["id"] == "cred.kubelet-api" && e["pod"].is_null());
    assert_eq!(reached["pid"], read["pid"], "the same process: {reached}");
    assert_eq!(reached["action"], "detected", "{reached}");
    assert!(reached["evidence"].as_str().is_some_and(|e| e.ends_with(&format!(":{port}"))), "{reached}");
    assert!(reached["message"].as_str().is_some_and(|m| m.contains("after reading kubelet credentials")), "{reached}");
}
