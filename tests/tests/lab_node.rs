//! The lab's node: pods with their own PID and mount namespaces (or the host's with
//! hostPID), per-pod volumes as tmpfs on the node, hostPath aliases, the stand-in kubelet
//! and its credentials, and a teardown that leaves nothing. No agent: this is the lab itself.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use moat_integration::{documents, leftovers, namespace_yaml, pod_yaml, Lab, Manifests, UpOptions};

fn no_agent() -> UpOptions {
    UpOptions { no_agent: true, ..UpOptions::default() }
}

/// `pod_yaml` with `spec` lines (indented two spaces) added before the containers.
fn pod_with_spec(namespace: &str, name: &str, spec: &str) -> String {
    pod_yaml(namespace, name, &[], &[(80, "TCP")]).replacen("spec:\n", &format!("spec:\n{spec}"), 1)
}

/// `pod_with_spec` plus `volumeMounts` (lines indented eight spaces) on its container.
fn pod_with_mounts(namespace: &str, name: &str, spec: &str, mounts: &str) -> String {
    let pod = pod_with_spec(namespace, name, spec);
    pod.replacen("      ports:\n", &format!("      volumeMounts:\n{mounts}      ports:\n"), 1)
}

#[test]
fn pods_have_their_own_pid_and_mount_namespaces_unless_host_pid() {
    let manifests = Manifests::new();
    let file = manifests.write(
        "pods.yaml",
        &documents(&[
            namespace_yaml("x", &[("tenant", "a")]),
            pod_yaml("x", "a", &[], &[(80, "TCP")]),
            pod_with_spec("x", "h", "  hostPID: true\n"),
        ]),
    );
    let lab = Lab::up(&[file], no_agent());

    // The sandbox is PID 1 of the pod and the command runs in the pod's PID namespace.
    assert_eq!(lab.exec_ok("x/a", &["cat", "/proc/1/comm"]).trim(), "pause");
    let pid: u32 = lab.exec_ok("x/a", &["sh", "-c", "echo $$"]).trim().parse().expect("a pid");
    assert!(pid < 100, "the shell's pid {pid} is counted in the pod's own PID namespace");
    assert_eq!(lab.exec_ok("x/a", &["hostname"]).trim(), "a");
    let sandbox = lab.sandbox_pid("x/a");
    let comm = std::fs::read_to_string(format!("/proc/{sandbox}/comm")).expect("the sandbox runs");
    assert_eq!(comm.trim(), "pause");

    // hostPID: the host's PID 1 and the host's /proc.
    let host_init = std::fs::read_to_string("/proc/1/comm").expect("/proc/1/comm");
    assert_eq!(lab.exec_ok("x/h", &["cat", "/proc/1/comm"]), host_init);
    let own = std::process::id().to_string();
    assert!(lab.exec("x/h", &["test", "-d", &format!("/proc/{own}")]).success, "the hostPID pod sees host pids");
    assert!(!lab.exec("x/a", &["test", "-d", &format!("/proc/{own}")]).success || own.parse::<u32>().unwrap() < 100);

    // A mount made inside the pod stays inside it.
    let source = format!("moat-inner-{}", lab.name());
    let script = format!("mount -t tmpfs {source} /var/run/secrets/kubernetes.io && grep -c {source} /proc/self/mountinfo");
    assert_eq!(lab.exec_ok("x/a", &["sh", "-c", &script]).trim(), "1");
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!host.contains(&source), "a pod's mount reached the host:\n{host}");
    assert!(!lab.exec_ok("x/h", &["cat", "/proc/self/mountinfo"]).contains(&source), "a pod's mount reached another pod");
}

#[test]
fn exec_passes_stdio_through_and_returns_the_status() {
    let manifests = Manifests::new();
    let file = manifests.write("pods.yaml", &documents(&[namespace_yaml("x", &[]), pod_yaml("x", "a", &[], &[])]));
    let lab = Lab::up(&[file], no_agent());
    assert_eq!(lab.exec("x/a", &["sh", "-c", "exit 7"]).code, Some(7));
    let failed = lab.exec("x/a", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((failed.code, failed.stdout.as_str(), failed.stderr.as_str()), (Some(3), "out\n", "err\n"), "{failed}");
    let mut child = Command::new(lab.moat())
        .args(["lab", "exec", "--name", lab.name(), "x/a", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("moat lab exec");
    child.stdin.take().expect("stdin").write_all(b"through the pod\n").expect("writing stdin");
    let output = child.wait_with_output().expect("waiting for moat lab exec");
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "through the pod\n");
    // Killed by a signal: the caller sees the signal.
    let killed = lab.exec("x/a", &["sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.code, None, "{killed}");
}

#[test]
fn volumes_are_tmpfs_of_their_own_and_host_paths_alias_the_node() {
    let manifests = Manifests::new();
    let lab = Lab::reserve();
    let kubelet_root = lab.kubelet_root();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: x\nstringData:\n  password: hunter2\n";
    let volumes = format!(
        "  volumes:\n    - name: creds\n      secret:\n        secretName: db\n    - name: kubelet\n      hostPath:\n        path: {}\n        type: DirectoryOrCreate\n",
        kubelet_root.display()
    );
    let mounts = "        - name: creds\n          mountPath: /etc/creds\n        - name: kubelet\n          mountPath: /host/var/lib/kubelet\n";
    let file = manifests.write(
        "pods.yaml",
        &documents(&[
            namespace_yaml("x", &[]),
            secret.to_string(),
            pod_with_mounts("x", "a", &volumes, mounts),
            pod_yaml("x", "b", &[], &[]).replacen("metadata:\n", "metadata:\n  uid: 0b0b0b0b-0000-4000-8000-00000000000b\n", 1),
        ]),
    );
    lab.start(&[file], no_agent());

    // Uids: from the manifest, else derived; the agent's manifests carry the same.
    let (uid_a, uid_b) = (lab.pod_uid("x/a"), lab.pod_uid("x/b"));
    assert_eq!(uid_b, "0b0b0b0b-0000-4000-8000-00000000000b");
    assert_eq!(uid_a.len(), 36, "{uid_a}");
    let cluster = std::fs::read_to_string(lab.manifests_dir().join("cluster.json")).expect("cluster.json");
    assert!(cluster.contains(&uid_a) && cluster.contains(&uid_b), "{cluster}");

    // Each pod sees its own token, from its own tmpfs on the node.
    let token_a = lab.pod_token_volume("x/a");
    let token_b = lab.pod_token_volume("x/b");
    assert!(token_a.starts_with(kubelet_root.join("pods").join(&uid_a).join("volumes")), "{}", token_a.display());
    let on_node = std::fs::read_to_string(token_a.join("token")).expect("token on the node");
    assert_eq!(lab.exec_ok("x/a", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]), on_node);
    assert_eq!(lab.exec_ok("x/b", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"]), "x");
    assert!(lab.exec_ok("x/b", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"]).starts_with("-----BEGIN CERTIFICATE-----"));
    let secret_dir = lab.pod_volume("x/a", "creds");
    assert_eq!(lab.exec_ok("x/a", &["cat", "/etc/creds/password"]), "hunter2");
    let devices: Vec<u64> = [&token_a, &token_b, &secret_dir, &kubelet_root]
        .iter()
        .map(|dir| std::fs::metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).dev())
        .collect();
    for (i, dev) in devices.iter().enumerate() {
        assert_eq!(devices.iter().filter(|other| *other == dev).count(), 1, "volume {i} shares a filesystem: {devices:?}");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let tmpfs_volume = |dir: &Path| mountinfo.lines().any(|l| l.split(' ').nth(4) == dir.to_str() && l.contains(" - tmpfs "));
    assert!(tmpfs_volume(&token_a) && tmpfs_volume(&token_b) && tmpfs_volume(&secret_dir), "volumes are tmpfs mounts on the host");
    // Read-only, as the kubelet mounts them.
    assert!(!lab.exec("x/a", &["sh", "-c", "echo x > /etc/creds/new"]).success);

    // The hostPath alias shows the node's kubelet root, other pods' volumes included.
    let other = format!("/host/var/lib/kubelet/pods/{uid_b}/volumes/kubernetes.io~projected/{}/token", token_b.file_name().unwrap().to_string_lossy());
    let seen = lab.exec_ok("x/a", &["cat", &other]);
    assert_eq!(seen, std::fs::read_to_string(token_b.join("token")).expect("b's token"));
    // Without the hostPath, the node's volumes are out of a pod's sight.
    assert!(!lab.exec("x/b", &["test", "-e", &token_a.join("token").display().to_string()]).success);
}

#[test]
fn the_stand_in_kubelet_runs_from_the_node_and_rotates_its_certificate() {
    let manifests = Manifests::new();
    let file = manifests.write("pods.yaml", &documents(&[namespace_yaml("x", &[]), pod_yaml("x", "a", &[], &[])]));
    let lab = Lab::up(&[file], no_agent());
    let pid = lab.kubelet_pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the kubelet runs");
    assert_eq!(exe, lab.kubelet_executable());
    let kubelet_inode = std::fs::metadata(&exe).expect("kubelet").ino();
    assert_ne!(kubelet_inode, std::fs::metadata(lab.lab_bin()).expect("moat-lab").ino(), "a copy with its own inode");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let relative = lab.node().kubelet_cgroup;
    assert!(cgroup.lines().any(|line| line == format!("0::{}", relative.display())), "{cgroup}");
    assert!(lab.kubelet_cgroup().join("cgroup.procs").exists());

    // Credentials where a kubeadm node has them.
    for path in lab.kubeconfigs() {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("kind: Config"), "{}", path.display());
    }
    assert!(std::fs::read_to_string(&lab.kubeconfigs()[0]).unwrap().contains(&lab.current_cert().display().to_string()));
    let before = std::fs::read_link(lab.current_cert()).expect("the current certificate is a symlink");
    assert!(before.starts_with(lab.pki_dir()) && before.to_string_lossy().contains("kubelet-client-20"), "{}", before.display());
    let rotated = lab.kubelet_rotate();
    let after = std::fs::read_link(lab.current_cert()).expect("still a symlink");
    assert_ne!(before, after);
    assert_eq!(after, rotated);
    assert!(before.exists(), "the old certificate is kept");
    let pem = std::fs::read_to_string(lab.current_cert()).expect("current certificate");
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"), "cert and key in one file");
    lab.kubelet_read();

    // Runtime stand-ins.
    assert!(lab.runtime_binary().is_file());
    std::os::unix::net::UnixStream::connect(lab.runtime_socket()).expect("the runtime socket accepts connections");
}

#[test]
fn lab_down_leaves_no_mounts_cgroups_or_processes() {
    let manifests = Manifests::new();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: x\nstringData:\n  k: v\n";
    let volumes = "  volumes:\n    - name: s\n      secret:\n        secretName: s\n";
    let mounts = "        - name: s\n          mountPath: /etc/s\n";
    let file = manifests.write(
        "pods.yaml",
        &documents(&[
            namespace_yaml("x", &[]),
            secret.to_string(),
            pod_with_mounts("x", "a", volumes, mounts),
            pod_with_spec("x", "h", "  hostPID: true\n"),
        ]),
    );
    let lab = Lab::up(&[file], UpOptions::default());
    let pids = [lab.sandbox_pid("x/a"), lab.sandbox_pid("x/h"), lab.kubelet_pid()];
    // A process left running inside the pod must go too.
    let mut sleeper = Command::new(lab.moat())
        .args(["lab", "exec", "--name", lab.name(), "x/a", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("moat lab exec sleep");
    assert!(!leftovers(lab.name()).is_empty());
    lab.lab(&["down", "--name", lab.name()]).ok();
    assert_eq!(leftovers(lab.name()), Vec::<String>::new(), "lab down left things behind");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}/cmdline")).exists() || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().is_empty(), "pid {pid} survived");
    }
    let status = sleeper.wait().expect("waiting for the exec");
    assert!(!status.success(), "the pod's process was killed: {status}");
}
