//! Runtime guard, container escapes through mounts, devices and kernel interfaces, each done
//! for real from a lab pod (`moat-attack`; `mount(8)` where a mount has to stay while files on
//! it are opened): `escape.cgroup-release-agent`, `escape.host-mount`, `escape.kernel-memory`;
//! then the modes: `detect` and `off` as configured, and what `moat status` says each
//! detection does on this kernel. Where the agent runs the probe that sees a technique as BPF
//! LSM, the technique is refused (EPERM) and reported `blocked`; elsewhere it goes through
//! and is reported `detected`. Each detection is checked exactly (id, pod, tenant, action,
//! mode, evidence), and normal activity next to it is checked silent.
//!
//! What a pod mounts or makes lives in its own root (a tmpfs in the pod's mount namespace,
//! never the host's) and is removed again by the technique or the script; where the host
//! could change, it is checked unchanged (no device node left, no cgroup hierarchy left).
//! Namespaces, ptrace and kernel extensions: `guard_escapes_process.rs`.

mod escapes;

use std::time::Duration;

use escapes::{
    agent_status, assert_exact, assert_silent, attack, attack_path, by, detection_status, evidence, failed_with, line,
    lines, message, outcome, script, single, succeeded, up, HostBlockDevice, Probes, NS,
};
use moat_integration::eventually;
use moat_integration::guard::PodSpec;

const BAD: &str = "esc/bad";
const QUIET: &str = "esc/quiet";
const HOSTPID: &str = "esc/hostpid";

fn pods() -> Vec<PodSpec> {
    vec![PodSpec::new(NS, "bad"), PodSpec::new(NS, "quiet")]
}

/// The v1 hierarchies this process sees (`/proc/self/cgroup` lists every mounted one, named
/// ones as `name=...`).
fn v1_hierarchies() -> String {
    std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup")
}

#[test]
fn cgroup_v1_mounts_and_release_files_opened_for_writing_are_detected() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), None);
    let id = "escape.cgroup-release-agent";
    let probes = Probes::of(&guard);
    let mount = probes.action("mount");

    // mount(2) of cgroup without options asks for every v1 controller: on a host that has
    // them mounted separately (hybrid layout) the kernel refuses with EBUSY, elsewhere it
    // mounts (and the tool unmounts). The call is seen either way; BPF LSM refuses it.
    let (output, seen) = attack(&guard, BAD, &["mount", "cgroup", "cgroup", "/esc-cgroup", "--mkdir"]);
    let result = line(&output);
    if probes.refuses("mount") {
        failed_with(&output, "EPERM");
    } else if result["ok"] == false {
        eprintln!("note: the kernel refused the plain cgroup v1 mount here ({}); asserting the detection of the call", result["errno"]);
    }
    let event = single(&seen, "mount -t cgroup");
    assert_exact(&event, id, BAD, mount);
    assert_eq!(evidence(&event), "mount type=cgroup source=cgroup target=/esc-cgroup", "{event}");
    assert!(by(&event, "moat-attack"), "{event}");

    // The new mount API: a cgroup filesystem context.
    let (output, seen) = attack(&guard, BAD, &["fsopen", "cgroup"]);
    succeeded(&output);
    let event = single(&seen, "fsopen cgroup");
    assert_exact(&event, id, BAD, "detected");
    assert_eq!(evidence(&event), "fsopen type=cgroup source= target=", "{event}");

    // CVE-2022-0492's route: a named v1 hierarchy of the pod's own, then its release_agent
    // and notify_on_release opened for writing (nothing is written). A read-only open of
    // release_agent is not an escape.
    let name = format!("moat-{}", guard.lab.name());
    let tool = attack_path();
    let (output, seen) = script(
        &guard,
        BAD,
        &format!(
            "mkdir /esc-v1
             if ! mount -t cgroup -o none,name={name} cgroup /esc-v1; then rmdir /esc-v1; echo v1-refused; exit 0; fi
             {tool} open /esc-v1/release_agent --write
             {tool} open /esc-v1/notify_on_release --write
             {tool} open /esc-v1/release_agent
             umount /esc-v1 && rmdir /esc-v1"
        ),
    );
    assert!(output.success, "{output}");
    // The kernel frees an unmounted hierarchy without cgroups asynchronously.
    let gone = eventually(Duration::from_secs(10), || (!v1_hierarchies().contains(&format!("name={name}"))).then_some(()));
    assert!(gone.is_some(), "the pod's hierarchy is gone:\n{}", v1_hierarchies());
    let mounts: Vec<_> = seen.iter().filter(|e| evidence(e).starts_with("mount ")).collect();
    let [mounted] = mounts.as_slice() else { panic!("one mount detection: {seen:#?}") };
    assert_exact(mounted, id, BAD, mount);
    assert_eq!(evidence(mounted), "mount type=cgroup source=cgroup target=/esc-v1", "{mounted}");
    assert!(by(mounted, "mount"), "{mounted}");
    assert!(!probes.refuses("mount") || output.stdout.contains("v1-refused"), "BPF LSM refuses the mount:\n{output}");
    if output.stdout.contains("v1-refused") {
        eprintln!("note: this kernel refuses a named cgroup v1 hierarchy; only the mount attempt is checked:\n{output}");
        assert_eq!(seen.len(), 1, "{seen:#?}");
        return;
    }
    let opened = lines(&output);
    assert_eq!(opened.len(), 3, "{output}");
    assert!(opened.iter().all(|l| l["ok"] == true), "every open succeeds (detect mode):\n{output}");
    let files: Vec<_> = seen.iter().filter(|e| !evidence(e).starts_with("mount ")).collect();
    assert_eq!(files.len(), 2, "the two opens for writing, not the read-only one: {seen:#?}");
    for (event, file) in files.iter().zip(["release_agent", "notify_on_release"]) {
        assert_exact(event, id, BAD, "detected");
        assert!(by(event, "moat-attack"), "{event}");
        let want = format!("/{file} on cgroup (device ");
        assert!(evidence(event).starts_with(&want), "evidence names {want:?}: {event}");
        assert!(message(event).starts_with("write to a cgroup v1 release file"), "{event}");
    }
}

#[test]
fn block_devices_are_refused_and_kernel_filesystem_mounts_detected() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), None);
    let id = "escape.host-mount";
    let probes = Probes::of(&guard);
    let refused = probes.refuses("mount");
    let device = HostBlockDevice::find();
    let number = device.number();
    let path = device.path.to_str().expect("UTF-8 path");

    // mknod of the host's block device: refused by cgroup/dev, and no node is left.
    let (output, seen) = attack(&guard, BAD, &["mknod-block", "/esc-disk", &device.major.to_string(), &device.minor.to_string()]);
    failed_with(&output, "EPERM");
    let event = single(&seen, "mknod of a block device");
    assert_exact(&event, id, BAD, "blocked");
    assert_eq!(evidence(&event), format!("block device {number}"), "{event}");
    assert!(message(&event).starts_with(&format!("mknod of block device {number} ")), "{event}");
    guard.lab.exec(BAD, &["test", "!", "-e", "/esc-disk"]).ok();

    // Opening the node the host has, read-only: the host can (HostBlockDevice), the pod not.
    let (output, seen) = attack(&guard, BAD, &["open", path, "--read-bytes", "0"]);
    failed_with(&output, "EPERM");
    let event = single(&seen, "open of a block device");
    assert_exact(&event, id, BAD, "blocked");
    assert_eq!(evidence(&event), format!("block device {number}"), "{event}");
    assert!(message(&event).starts_with(&format!("open of block device {number} ")), "{event}");

    // Mounting debugfs, and remounting /proc: seen at the call; refused by BPF LSM.
    let (output, seen) = attack(&guard, BAD, &["mount", "debugfs", "debugfs", "/esc-debugfs", "--mkdir"]);
    let result = outcome(&output, refused);
    assert!(refused || result["detail"].as_str().unwrap_or_default().contains("unmounted again"), "{output}");
    let event = single(&seen, "mount -t debugfs");
    assert_exact(&event, id, BAD, probes.action("mount"));
    assert_eq!(evidence(&event), "mount type=debugfs source=debugfs target=/esc-debugfs", "{event}");

    let (output, seen) = attack(&guard, BAD, &["fsopen", "debugfs"]);
    succeeded(&output);
    let event = single(&seen, "fsopen debugfs");
    assert_exact(&event, id, BAD, "detected");
    assert_eq!(evidence(&event), "fsopen type=debugfs source= target=", "{event}");

    // The pod's own /proc, with the flags it has: nothing changes, but a remount of proc is
    // how a container makes /proc writable again.
    let (output, seen) = attack(&guard, BAD, &["mount", "proc", "proc", "/proc", "--remount"]);
    outcome(&output, refused);
    let event = single(&seen, "mount -o remount /proc");
    assert_exact(&event, id, BAD, probes.action("mount"));
    assert_eq!(evidence(&event), "mount type=proc source=proc target=/proc", "{event}");
    let flags = message(&event).split("flags 0x").nth(1).and_then(|rest| rest.split(')').next()).map(|hex| u64::from_str_radix(hex, 16));
    assert!(matches!(flags, Some(Ok(flags)) if flags & libc::MS_REMOUNT != 0), "the message has MS_REMOUNT: {event}");

    // Normal: a tmpfs and a fresh proc in the pod's own mount namespace, character devices.
    for pod in [BAD, QUIET] {
        assert_silent(
            &guard,
            "mounts in the pod's own namespace, /dev/null",
            &[
                (pod, &["mount", "tmpfs", "tmpfs", "/esc-tmpfs", "--mkdir"]),
                (pod, &["mount", "proc", "proc", "/esc-proc", "--mkdir"]),
                (pod, &["open", "/dev/null", "--read-bytes", "1"]),
            ],
        );
    }
}

#[test]
fn debugfs_files_and_kernel_memory_interfaces_are_detected() {
    moat_integration::require_root();
    let guard = up(&[], &pods(), None);
    let id = "escape.kernel-memory";
    let probes = Probes::of(&guard);
    if probes.refuses("mount") {
        debugfs_through_the_nodes_mount(&guard, &probes);
    } else {
        debugfs_mounted_in_the_pod(&guard);
    }

    // The host's kernel memory and sysrq, and the hotplug helper (an escape.kernel-sysctl
    // through sysfs); this kernel may have none of them. Opening is all (nothing read or
    // written).
    let interfaces = [
        ("/proc/kcore", false, id, "/kcore on proc (device "),
        ("/proc/sysrq-trigger", true, id, "/sysrq-trigger on proc (device "),
        ("/sys/kernel/uevent_helper", true, "escape.kernel-sysctl", "kernel/uevent_helper on sysfs (device "),
    ];
    for (path, write, detection, want) in interfaces {
        if !std::path::Path::new(path).exists() {
            eprintln!("skipped {path}: it does not exist on this kernel");
            continue;
        }
        let mut args = vec!["open", path];
        if write {
            args.push("--write");
        }
        let (output, seen) = attack(&guard, BAD, &args);
        outcome(&output, probes.refuses("file-open"));
        let event = single(&seen, path);
        assert_exact(&event, detection, BAD, probes.action("file-open"));
        assert!(evidence(&event).starts_with(want), "evidence names {want:?}: {event}");
    }

    // Normal: the pod reading ordinary /proc and /sys files.
    assert_silent(
        &guard,
        "ordinary /proc and /sys reads",
        &[
            (QUIET, &["open", "/proc/self/status", "--read-bytes", "16"]),
            (QUIET, &["open", "/proc/meminfo", "--read-bytes", "16"]),
            (QUIET, &["open", "/proc/sys/kernel/hostname", "--read-bytes", "16"]),
            (QUIET, &["open", "/sys/devices/system/cpu/online", "--read-bytes", "16"]),
        ],
    );
}

/// debugfs mounted by the pod itself, then one of its read-only files and its root opened
/// (read-only: nothing is read or written) — where mounting is not refused.
fn debugfs_mounted_in_the_pod(guard: &moat_integration::guard::GuardLab) {
    let id = "escape.kernel-memory";
    let tool = attack_path();
    let (output, seen) = script(
        guard,
        BAD,
        &format!(
            "set -e
             mkdir /esc-debugfs
             mount -t debugfs debugfs /esc-debugfs
             file=$(find /esc-debugfs -maxdepth 1 -type f -perm -0444 ! -perm /0222 | head -n 1)
             echo \"file=$file\"
             {tool} open \"$file\" || true
             {tool} open /esc-debugfs || true
             umount /esc-debugfs
             rmdir /esc-debugfs"
        ),
    );
    assert!(output.success, "{output}");
    let file = output.stdout.lines().find_map(|l| l.strip_prefix("file=/esc-debugfs/")).unwrap_or_else(|| panic!("no read-only debugfs file:\n{output}"));
    assert!(!file.is_empty(), "a read-only file in debugfs' root:\n{output}");
    let opened = lines(&output);
    assert!(opened.len() == 2 && opened.iter().all(|l| l["ok"] == true), "both opens succeed (detect mode):\n{output}");
    // The shell's mount(8) is escape.host-mount; find and umount open debugfs too: every
    // detection is one of the two, and moat-attack's two opens are there exactly.
    assert!(seen.iter().all(|e| e["id"] == id || e["id"] == "escape.host-mount"), "{seen:#?}");
    let mounts: Vec<_> = seen.iter().filter(|e| e["id"] == "escape.host-mount").collect();
    assert!(mounts.len() == 1 && evidence(mounts[0]) == "mount type=debugfs source=debugfs target=/esc-debugfs", "{seen:#?}");
    let ours: Vec<_> = seen.iter().filter(|e| e["id"] == id && by(e, "moat-attack")).collect();
    assert_eq!(ours.len(), 2, "moat-attack's two opens: {seen:#?}");
    for (event, path) in ours.iter().zip([format!("/{file}"), "/".to_string()]) {
        assert_exact(event, id, BAD, "detected");
        let want = format!("{path} on debugfs (device ");
        assert!(evidence(event).starts_with(&want), "evidence names {want:?}: {event}");
        assert!(message(event).starts_with("access to kernel memory or debug interfaces"), "{event}");
    }
}

/// Where BPF LSM refuses the pod's debugfs mount: the mount fails, and the node's own debugfs
/// (which the pod reaches through the host's /sys) refuses the pod's opens.
fn debugfs_through_the_nodes_mount(guard: &moat_integration::guard::GuardLab, probes: &Probes) {
    let id = "escape.kernel-memory";
    let (output, seen) = script(guard, BAD, "mkdir /esc-debugfs; mount -t debugfs debugfs /esc-debugfs; echo status=$?; rmdir /esc-debugfs");
    assert!(output.stdout.contains("status=") && !output.stdout.contains("status=0"), "the mount is refused:\n{output}");
    let mount = single(&seen, "mount -t debugfs (refused)");
    assert_exact(&mount, "escape.host-mount", BAD, "blocked");
    let node = std::path::Path::new("/sys/kernel/debug");
    let file = std::fs::read_dir(node)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this node has no debugfs at {} to try from the pod", node.display()));
    let path = file.to_str().expect("UTF-8 path");
    let (output, seen) = attack(guard, BAD, &["open", path]);
    outcome(&output, probes.refuses("file-open"));
    let event = single(&seen, "open of the node's debugfs");
    assert_exact(&event, id, BAD, probes.action("file-open"));
    let want = format!("/{} on debugfs (device ", file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    assert!(evidence(&event).starts_with(&want), "evidence names {want:?}: {event}");
}

#[test]
fn detect_mode_lets_mknod_through_and_off_reports_nothing() {
    moat_integration::require_root();
    let config = "guard:\n  detections:\n    escape.host-mount: detect\n    escape.cgroup-release-agent: \"off\"\n    escape.setns: \"off\"\n";
    let mut pods = pods();
    pods.push(PodSpec::new(NS, "hostpid").host_pid());
    let guard = up(&[], &pods, Some(config));
    let status = agent_status(&guard.lab);
    for (id, configured, effective) in [
        ("escape.host-mount", "detect", "detect"),
        ("escape.cgroup-release-agent", "off", "off"),
        ("escape.setns", "off", "off"),
        ("escape.kernel-sysctl", "block", "block"),
    ] {
        let entry = detection_status(&status, id);
        assert_eq!((entry["configured"].as_str(), entry["effective"].as_str()), (Some(configured), Some(effective)), "{entry}");
    }
    let log = guard.lab.agent_log();
    for (id, mode) in [("escape.host-mount", "detect"), ("escape.setns", "off")] {
        assert!(log.contains(&format!("\"detection\":\"{id}\",\"mode\":\"{mode}\"")), "start-up logs {id} as {mode}:\n{log}");
    }

    // detect: the node is made (and removed again by the tool), the call reported with its
    // path and the device number it asked for.
    let device = HostBlockDevice::find();
    let number = device.number();
    let (output, seen) = attack(&guard, BAD, &["mknod-block", "/esc-disk", &device.major.to_string(), &device.minor.to_string()]);
    assert!(succeeded(&output)["detail"].as_str().unwrap_or_default().ends_with("removed again"), "{output}");
    guard.lab.exec(BAD, &["test", "!", "-e", "/esc-disk"]).ok();
    let event = single(&seen, "mknod in detect mode");
    assert_exact(&event, "escape.host-mount", BAD, "detected");
    assert_eq!(evidence(&event), "/esc-disk", "{event}");
    assert!(message(&event).starts_with(&format!("mknod of block device {number} at /esc-disk ")), "{event}");

    let (output, seen) = attack(&guard, BAD, &["open", device.path.to_str().expect("UTF-8 path"), "--read-bytes", "0"]);
    succeeded(&output);
    let event = single(&seen, "open of a block device in detect mode");
    assert_exact(&event, "escape.host-mount", BAD, "detected");
    assert_eq!(evidence(&event), format!("block device {number}"), "{event}");

    // off: the same techniques that are reported by default yield nothing.
    let kubelet_net = format!("/proc/{}/ns/net", guard.lab.kubelet_pid());
    assert_silent(
        &guard,
        "detections set off",
        &[(BAD, &["fsopen", "cgroup"]), (BAD, &["unshare-user"]), (HOSTPID, &["setns", &kubelet_net, "--type", "net"])],
    );
}

#[test]
fn status_lists_every_detection_and_what_this_kernel_does_with_it() {
    moat_integration::require_root();
    let guard = up(&[], &[], None);
    let status = agent_status(&guard.lab);
    let probes = Probes::of(&guard);
    let listed = status["detections"]["configured"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = listed.iter().filter_map(|d| d["id"].as_str()).collect();
    let registry: Vec<&str> = moat_agent::detections::DETECTIONS.iter().map(|s| s.id).collect();
    assert_eq!(ids, registry, "every detection, once, in registry order: {status}");
    let log = guard.lab.agent_log();
    let connect_unix = status["capabilities"]["cgroup_connect_unix"] == "attached";
    for spec in moat_agent::detections::DETECTIONS.iter() {
        let entry = detection_status(&status, spec.id);
        assert_eq!(entry["configured"], "block", "the default: {entry}");
        let note = entry["note"].as_str().unwrap_or_default();
        // Refused where every probe it needs refusing by is BPF LSM, or a hook every kernel
        // has refuses part of it; cgroup/connect_unix refuses runtime sockets (6.7+).
        let lsm = !spec.lsm_refuses.is_empty() && spec.lsm_refuses.iter().all(|p| probes.refuses(p.name()));
        let runtime_socket = spec.id == "escape.runtime-socket" && connect_unix;
        let effective = if lsm || runtime_socket || spec.always_refused.is_some() { "block" } else { "detect" };
        assert_eq!(entry["effective"], effective, "{entry}");
        if effective == "detect" {
            assert!(note.contains("BPF LSM"), "the note says refusing needs BPF LSM: {entry}");
        }
        assert_eq!(entry["severity"], spec.severity, "{entry}");
        // It holds exactly the hooks of its probes (and cgroup/connect_unix).
        let hooks: Vec<String> = entry["hooks"].as_array().into_iter().flatten().filter_map(|h| h.as_str().map(String::from)).collect();
        for probe in spec.probes {
            let attached = status["probes"].as_array().into_iter().flatten().find(|p| p["probe"] == probe.name()).cloned().unwrap_or_default();
            for hook in attached["hooks"].as_array().into_iter().flatten().filter_map(|h| h.as_str()) {
                assert!(hooks.iter().any(|h| h == hook), "{} holds {hook} of probe {}: {entry}", spec.id, probe.name());
            }
        }
        if spec.probes.iter().any(|p| !matches!(p, moat_agent::detections::Probe::Mknod | moat_agent::detections::Probe::ConnectRefusals)) {
            assert!(!hooks.is_empty(), "every detection with probes holds some hook here: {entry}");
        }
        let logged = format!("\"detection\":\"{}\",\"mode\":\"{effective}\"", spec.id);
        assert!(log.contains(&logged), "start-up logs {logged}:\n{log}");
    }
    // What refuses without BPF LSM on every kernel, by name.
    for id in ["escape.kernel-sysctl", "escape.host-mount", "cred.kubelet-api", "node.foreign-tenant"] {
        assert_eq!(detection_status(&status, id)["effective"], "block", "{status}");
    }
    let host_mount = detection_status(&status, "escape.host-mount");
    let note = host_mount["note"].as_str().unwrap_or_default();
    assert!(note.contains("cgroup/dev") || probes.refuses("mount"), "names cgroup/dev: {host_mount}");
    // Every probe the default configuration needs is attached one way or another, except
    // module loading on a kernel without modules.
    for probe in status["probes"].as_array().into_iter().flatten() {
        let modules = std::path::Path::new("/proc/modules").exists();
        if probe["needed"] == true && (probe["probe"] != "module-load" || modules) {
            assert!(probe["kind"].is_string(), "attached: {probe}");
        }
    }
}
