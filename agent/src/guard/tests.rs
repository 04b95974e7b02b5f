use super::*;
use crate::compiler::Index;
use crate::model::{PodKey, TenantName};
use moat_common::event::*;

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

#[test]
fn decodes_a_blocked_write_naming_the_pod() {
    let mut index = Index::default();
    let pod = PodKey::new("alpha-web", "api");
    index.pods_by_cgroup.insert(42, pod.clone());
    index.pod_tenants.insert(pod, TenantName::Label("alpha".into()));
    let event = GuardEvent {
        detection: DETECTION_KERNEL_SYSCTL as u8,
        blocked: 1,
        hook: GUARD_HOOK_SYSCTL,
        evidence: EVIDENCE_SYSCTL,
        cgroup: 42,
        pid: 101,
        tgid: 100,
        comm: padded::<COMM_LEN>("sh"),
        subject: padded::<SUBJECT_LEN>("kernel/core_pattern"),
        ..GuardEvent::default()
    };
    let detection = decode(&event, &index).expect("reported");
    assert_eq!(detection.id, "escape.kernel-sysctl");
    assert_eq!(detection.severity, "critical");
    assert_eq!(detection.mode, "block");
    assert_eq!(detection.action, "blocked");
    assert_eq!(detection.tenant.as_deref(), Some("alpha"));
    assert_eq!(detection.namespace.as_deref(), Some("alpha-web"));
    assert_eq!(detection.pod.as_deref(), Some("api"));
    assert_eq!(detection.pid, Some(100));
    assert_eq!(detection.executable.as_deref(), Some("sh"));
    assert_eq!(detection.evidence.as_deref(), Some("/proc/sys/kernel/core_pattern"));
}

#[test]
fn runtime_socket_records_say_refused_by_path_or_killed() {
    let refused = GuardEvent {
        detection: DETECTION_RUNTIME_SOCKET as u8,
        blocked: 1,
        hook: GUARD_HOOK_CONNECT_UNIX,
        evidence: EVIDENCE_SOCKET,
        ino: 77,
        subject: padded::<SUBJECT_LEN>("/host/run/containerd/containerd.sock"),
        ..GuardEvent::default()
    };
    let detection = decode(&refused, &Index::default()).expect("reported");
    assert_eq!((detection.mode.as_str(), detection.action.as_str()), ("block", "blocked"));
    assert_eq!(detection.evidence.as_deref(), Some("/host/run/containerd/containerd.sock (runtime socket socket inode 77)"));
    let killed = GuardEvent { blocked: GUARD_ACTION_KILLED, hook: GUARD_HOOK_SYS_EXIT, subject: [0; SUBJECT_LEN], ..refused };
    let detection = decode(&killed, &Index::default()).expect("reported");
    assert_eq!((detection.mode.as_str(), detection.action.as_str()), ("block", "killed"));
    assert_eq!(detection.evidence.as_deref(), Some("socket inode 77"));
    assert!(detection.message.ends_with(": killed"), "{}", detection.message);
}

#[test]
fn an_unknown_cgroup_is_still_reported() {
    let event = GuardEvent {
        detection: DETECTION_KERNEL_SYSCTL as u8,
        hook: GUARD_HOOK_SYSCTL,
        evidence: EVIDENCE_SYSCTL,
        subject: padded::<SUBJECT_LEN>("kernel/modprobe"),
        ..GuardEvent::default()
    };
    let detection = decode(&event, &Index::default()).expect("reported");
    assert_eq!(detection.action, "detected");
    assert_eq!(detection.pod, None);
    assert_eq!(detection.evidence.as_deref(), Some("/proc/sys/kernel/modprobe"));
}

fn attached(kinds: &[(crate::kernel::guard_probes::Probe, crate::kernel::guard_probes::Kind)], connect_unix: bool) -> Attached {
    use crate::kernel::guard_probes::{Kind, Probe, ProbeStatus};
    let probes = Probe::ALL
        .iter()
        .map(|probe| {
            let kind = kinds.iter().find(|(p, _)| p == probe).map(|(_, k)| *k);
            let hooks = kind.map(|k| vec![format!("{}/{}", if k == Kind::Lsm { "lsm" } else { "tracepoint" }, probe.name())]).unwrap_or_default();
            (*probe, ProbeStatus { probe: probe.name(), kind, hooks, fallbacks: vec!["no way".into()], needed: true })
        })
        .collect();
    Attached { probes, connect_unix }
}

fn every(kind: crate::kernel::guard_probes::Kind) -> Vec<(crate::kernel::guard_probes::Probe, crate::kernel::guard_probes::Kind)> {
    crate::kernel::guard_probes::Probe::ALL.iter().map(|p| (*p, kind)).collect()
}

#[test]
fn default_is_block_and_falls_back_to_detect_without_lsm() {
    use crate::kernel::guard_probes::{Kind, Probe};
    let config = GuardConfig::default();
    let statuses = statuses(&config, &attached(&every(Kind::Tracepoint), false));
    assert_eq!(statuses.len(), DETECTIONS.len());
    let get = |id: &str| statuses.iter().find(|s| s.id == id).unwrap();
    assert!(statuses.iter().all(|s| s.configured == GuardMode::Block));
    assert_eq!(get("escape.kernel-sysctl").effective, GuardMode::Block);
    assert_eq!(get("escape.setns").effective, GuardMode::Detect);
    assert!(get("escape.setns").note.contains("BPF LSM"), "{}", get("escape.setns").note);
    assert!(get("escape.setns").hooks.contains(&"tracepoint/setns".to_string()), "{:?}", get("escape.setns").hooks);
    let with_lsm = super::statuses(&config, &attached(&every(Kind::Lsm), false));
    assert!(with_lsm.iter().all(|s| s.effective == GuardMode::Block), "{with_lsm:#?}");
    let mut detect = GuardConfig::default();
    detect.detections.insert("escape.kernel-sysctl".into(), GuardMode::Detect);
    assert_eq!(super::statuses(&detect, &attached(&[], false))[0].effective, GuardMode::Detect);
    // Only some probes as LSM: detections needing another one still only detect.
    let mut partial = every(Kind::Tracepoint);
    partial.retain(|(p, _)| *p != Probe::FileOpen);
    partial.push((Probe::FileOpen, Kind::Lsm));
    let partial = super::statuses(&config, &attached(&partial, false));
    let get = |id: &str| partial.iter().find(|s| s.id == id).unwrap().effective;
    assert_eq!(get("cred.kubelet-pki"), GuardMode::Block);
    assert_eq!(get("escape.kernel-module"), GuardMode::Detect);
}

#[test]
fn a_detection_nothing_can_see_is_unavailable_not_silently_on() {
    let config = GuardConfig::default();
    let none = statuses(&config, &attached(&[], false));
    let get = |id: &str| none.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(get("escape.setns").effective, GuardMode::Off);
    assert!(get("escape.setns").note.starts_with("unavailable"), "{:?}", get("escape.setns"));
    // Hooks every kernel has still refuse their part.
    assert_eq!(get("escape.kernel-sysctl").effective, GuardMode::Block);
    assert_eq!(get("node.foreign-tenant").effective, GuardMode::Block);
}

#[test]
fn runtime_socket_blocks_with_connect_unix_or_lsm() {
    use crate::kernel::guard_probes::{Kind, Probe};
    let config = GuardConfig::default();
    let effective = |kinds: &[(Probe, Kind)], connect_unix: bool| {
        let all = statuses(&config, &attached(kinds, connect_unix));
        let status = all.iter().find(|s| s.id == "escape.runtime-socket").unwrap().clone();
        (status.effective, status.note, status.hooks)
    };
    let (mode, note, _) = effective(&every(Kind::Tracepoint), false);
    assert_eq!(mode, GuardMode::Detect);
    assert!(note.contains("cgroup/connect_unix"), "{note}");
    let (mode, note, hooks) = effective(&every(Kind::Tracepoint), true);
    assert_eq!(mode, GuardMode::Block);
    assert!(note.contains("killed"), "{note}");
    assert_eq!(hooks[0], "cgroup/connect_unix");
    assert_eq!(effective(&every(Kind::Lsm), false).0, GuardMode::Block);
    // connect_unix is no BPF LSM: detections that need LSM stay detect-only.
    let all = statuses(&config, &attached(&every(Kind::Tracepoint), true));
    assert_eq!(all.iter().find(|s| s.id == "escape.setns").unwrap().effective, GuardMode::Detect);
}

#[test]
fn only_what_enabled_detections_need_is_wanted() {
    use crate::kernel::guard_probes::Probe;
    let all_off: GuardConfig = serde_yaml::from_str(&format!(
        "detections:\n{}",
        DETECTIONS.iter().map(|s| format!("  {}: off\n", s.id)).collect::<String>()
    ))
    .unwrap();
    assert!(wanted(&all_off, true).is_empty());
    let defaults = wanted(&GuardConfig::default(), false);
    assert!(defaults.contains(&Probe::FileOpen) && defaults.contains(&Probe::Setns));
    // mknod is reported by cgroup/dev in block mode; the probe is for detect mode only.
    assert!(!defaults.contains(&Probe::Mknod));
    assert!(!defaults.contains(&Probe::ConnectRefusals), "nothing to report without connect_unix");
    assert!(wanted(&GuardConfig::default(), true).contains(&Probe::ConnectRefusals));
    let mut detect = GuardConfig::default();
    detect.detections.insert("escape.host-mount".into(), GuardMode::Detect);
    assert!(wanted(&detect, false).contains(&Probe::Mknod));
    // Only the kernel-module detection on: its three probes, nothing else.
    let mut only = all_off.clone();
    only.detections.insert("escape.kernel-module".into(), GuardMode::Block);
    assert_eq!(wanted(&only, true).into_iter().collect::<Vec<_>>(), vec![Probe::ModuleLoad, Probe::Bpf, Probe::PerfEvent]);
}

#[test]
fn config_spelling() {
    let config: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctl: detect").unwrap();
    assert_eq!(config.mode(&registry::KERNEL_SYSCTL), GuardMode::Detect);
    assert_eq!(config.mode(&registry::SETNS), GuardMode::Block);
    assert!(serde_yaml::from_str::<GuardConfig>("detections:\n  escape.kernel-sysctl: maybe").is_err());
    assert!(serde_yaml::from_str::<GuardConfig>("kernelSysctl: block").is_err());
    let unknown: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctls: block").unwrap();
    let (field, message) = unknown.validate().unwrap_err();
    assert_eq!(field, "guard.detections.escape.kernel-sysctls");
    assert!(message.contains("escape.kernel-sysctl,"), "{message}");
    let relative: GuardConfig = serde_yaml::from_str("runtime:\n  sockets: [run/x.sock]").unwrap();
    assert_eq!(relative.validate().unwrap_err().0, "guard.runtime.sockets[0]");
    let server: GuardConfig = serde_yaml::from_str("apiServers: [\"10.0.0.1\"]").unwrap();
    assert_eq!(server.validate().unwrap_err().0, "guard.apiServers[0]");
}

fn event(detection: u32, hook: u8, evidence: u8) -> GuardEvent {
    GuardEvent { detection: detection as u8, hook, evidence, tgid: u32::MAX, ..GuardEvent::default() }
}

#[test]
fn mounts_name_fstype_source_and_target() {
    let mut raw = event(DETECTION_CGROUP_RELEASE_AGENT, GUARD_HOOK_SYS_ENTER, EVIDENCE_MOUNT);
    raw.owner = u64::from(moat_common::guard::SYSCALL_MOUNT);
    raw.subject[..6].copy_from_slice(b"cgroup");
    raw.subject[MOUNT_FSTYPE_LEN..MOUNT_FSTYPE_LEN + 6].copy_from_slice(b"cgroup");
    raw.subject[MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN..MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN + 4].copy_from_slice(b"/mnt");
    let detection = decode(&raw, &Index::default()).expect("reported");
    assert_eq!(detection.id, "escape.cgroup-release-agent");
    assert_eq!(detection.evidence.as_deref(), Some("mount type=cgroup source=cgroup target=/mnt"));
}

fn setns_record(magic: u64, ino: u64, nstype: u64, before: [u32; 6], after: [u32; 6], shared: u32) -> GuardEvent {
    let mut raw = event(DETECTION_SETNS, GUARD_HOOK_SYS_EXIT, EVIDENCE_NAMESPACES);
    raw.arg = magic;
    raw.ino = ino;
    raw.owner = nstype;
    raw.target_pid = shared;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        raw.subject[4 * i..4 * i + 4].copy_from_slice(&b.to_ne_bytes());
        raw.subject[24 + 4 * i..24 + 4 * i + 4].copy_from_slice(&a.to_ne_bytes());
    }
    raw
}

#[test]
fn setns_names_the_host_namespaces_joined() {
    use moat_common::guard::{NS_MNT, NS_NET, NS_PID};
    const NSFS: u64 = 0x6e73_6673;
    let host = [11, 12, 13, 14, 15, 16];
    let pod = [21, 22, 23, 24, 25, 26];
    let joined = |raw: &GuardEvent| decode::host_namespaces_joined(raw, &host);
    // By a namespace file: the one it names.
    assert_eq!(joined(&setns_record(NSFS, 15, 0, pod, pod, 0)), 1 << NS_NET);
    // By a pidfd: the requested types now equal to the host's.
    let mut after = host;
    after[0] = 21;
    let flags = (libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWUTS) as u64;
    assert_eq!(joined(&setns_record(0, 0, flags, pod, after, 0)), (1 << NS_NET) | (1 << NS_MNT));
    // Already in it before (a hostPID pod's PID namespace) or shared by design: no change.
    let mut before = pod;
    before[NS_MNT] = 13;
    assert_eq!(joined(&setns_record(0, 0, flags, before, after, 1 << NS_NET)), 0);
    // Its own namespaces: nothing joined (the decoder drops such records; the integration
    // tests check the events).
    assert_eq!(joined(&setns_record(NSFS, 25, 0, pod, pod, 0)), 0);
    assert_eq!(joined(&setns_record(0, 0, flags, pod, after, 1 << NS_PID)), (1 << NS_NET) | (1 << NS_MNT));
}

#[test]
fn kubelet_api_names_the_address_and_port() {
    let mut raw = event(DETECTION_KUBELET_API, GUARD_HOOK_CONNECT, EVIDENCE_ADDRESS);
    raw.blocked = 1;
    raw.arg = 10250;
    raw.subject[..16].copy_from_slice(&moat_common::maps::ipv4_mapped([10, 0, 0, 7]));
    let detection = decode(&raw, &Index::default()).expect("reported");
    assert_eq!(detection.evidence.as_deref(), Some("10.0.0.7:10250"));
    assert_eq!((detection.mode.as_str(), detection.action.as_str()), ("block", "blocked"));
}

#[test]
fn ptrace_inside_a_pods_own_pid_namespace_is_dropped() {
    // The actor (this test process) is in the host's PID namespace here, so a target that
    // is this very process is "the same pod": same cgroup.
    let host_pid_ns = kernel_maps::host_namespace("pid");
    decode::publish(decode::GuardView { host_pid_ns, ..Default::default() });
    let mut index = Index::default();
    let cgroup = decode::tests_support::own_cgroup();
    index.pods_by_cgroup.insert(cgroup, PodKey::new("ns", "p"));
    let mut raw = event(DETECTION_PTRACE, GUARD_HOOK_SYS_ENTER, EVIDENCE_TARGET);
    raw.tgid = std::process::id();
    raw.target_pid = std::process::id();
    raw.cgroup = cgroup;
    assert!(decode(&raw, &index).is_none());
    // A target the agent cannot place in the actor's pod (gone, or elsewhere): reported.
    raw.target_pid = 4_000_000;
    assert!(decode(&raw, &index).is_some());
}

#[test]
fn mknod_names_the_device_number_the_kernel_sends() {
    // sys_enter mknodat: `arg` is the call's dev argument (userspace encoding), the subject
    // the path.
    let mut raw = event(DETECTION_HOST_MOUNT, GUARD_HOOK_SYS_ENTER, EVIDENCE_MKNOD);
    raw.owner = u64::from(moat_common::guard::SYSCALL_MKNODAT);
    raw.arg = libc::makedev(254, 3) as u64;
    raw.subject[..8].copy_from_slice(b"/dev/sdz");
    let detection = decode(&raw, &Index::default()).expect("reported");
    assert_eq!(detection.evidence.as_deref(), Some("/dev/sdz"));
    assert!(detection.message.starts_with("mknod of block device 254:3 at /dev/sdz"), "{}", detection.message);
}

#[test]
fn kernel_interface_files_name_their_filesystem_and_path() {
    let file = |detection: u32, magic: u64, parent: &str, name: &str| {
        let mut raw = event(detection, GUARD_HOOK_SYS_EXIT, EVIDENCE_FILE);
        raw.arg = magic;
        raw.dev = moat_common::guard::kernel_dev(0, 49);
        raw.ino = 7;
        raw.subject[..name.len()].copy_from_slice(name.as_bytes());
        raw.subject[64..64 + parent.len()].copy_from_slice(parent.as_bytes());
        decode(&raw, &Index::default()).expect("reported").evidence.unwrap_or_default()
    };
    // A file at a filesystem's root (whose dentry is named "/"), the root itself, a deeper file.
    assert_eq!(file(DETECTION_CGROUP_RELEASE_AGENT, 0x27e0eb, "/", "release_agent"), "/release_agent on cgroup (device 0:49, inode 7)");
    assert_eq!(file(DETECTION_KERNEL_MEMORY, 0x6462_6720, "/", "/"), "/ on debugfs (device 0:49, inode 7)");
    assert_eq!(file(DETECTION_KERNEL_MEMORY, 0x6462_6720, "tracing", "trace"), "tracing/trace on debugfs (device 0:49, inode 7)");
    // Other filesystems are named by path alone.
    assert_eq!(file(DETECTION_RUNTIME_BINARY, 0xef53, "bin", "runc"), "bin/runc (device 0:49, inode 7)");
}

#[test]
fn ptrace_by_an_exited_actor_uses_the_pid_namespace_the_kernel_recorded() {
    let host_pid_ns = kernel_maps::host_namespace("pid");
    decode::publish(decode::GuardView { host_pid_ns, ..Default::default() });
    // The actor (tgid u32::MAX) is gone: /proc cannot say which PID namespace it was in.
    let mut raw = event(DETECTION_PTRACE, GUARD_HOOK_SYS_ENTER, EVIDENCE_TARGET);
    raw.owner = u64::from(moat_common::guard::SYSCALL_PROCESS_VM_WRITEV);
    raw.target_pid = 4_000_000;
    // A pod's own PID namespace: the target can only be one of its own processes.
    raw.ino = host_pid_ns + 1;
    assert!(decode(&raw, &Index::default()).is_none());
    // The host's: a global PID, here of no process in the actor's pod.
    raw.ino = host_pid_ns;
    assert!(decode(&raw, &Index::default()).is_some());
}

#[test]
fn actors_carry_host_network_and_host_pid() {
    use moat_common::guard::{ACTOR_HOST_NETWORK, ACTOR_HOST_PID};
    let mut index = Index::default();
    let mut cluster = crate::model::Cluster::default();
    for (cgroup, name, host_network, host_pid) in [(1, "plain", false, false), (2, "net", true, false), (3, "pid", false, true)] {
        let key = PodKey::new("ns", name);
        index.pods_by_cgroup.insert(cgroup, key.clone());
        let pod = crate::model::Pod { key: key.clone(), uid: None, labels: Default::default(), ips: vec![], node_name: None, host_network, host_pid, ports: vec![] };
        cluster.pods.insert(key, pod);
    }
    let actors = kernel_maps::actors(&index, &cluster, &GuardConfig::default(), None);
    assert_eq!([actors[&1].flags, actors[&2].flags, actors[&3].flags], [0, ACTOR_HOST_NETWORK, ACTOR_HOST_PID]);
}

#[test]
fn the_executable_named_is_the_one_that_acted_not_what_it_exec_ed_later() {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::read_link("/proc/self/exe").expect("own exe");
    let meta = std::fs::metadata("/proc/self/exe").expect("own exe");
    let mut raw = GuardEvent {
        detection: DETECTION_KERNEL_MODULE as u8,
        evidence: EVIDENCE_CALL,
        tgid: std::process::id(),
        exe_dev: moat_common::guard::kernel_dev(libc::major(meta.dev()), libc::minor(meta.dev())),
        exe_ino: meta.ino(),
        exe_name: padded::<EXE_NAME_LEN>(&own.file_name().unwrap().to_string_lossy()),
        ..GuardEvent::default()
    };
    // Still running the recorded file: its full path from /proc.
    let detection = decode(&raw, &Index::default()).expect("reported");
    assert_eq!(detection.executable.as_deref(), Some(own.to_str().unwrap()));
    // The process has exec'ed something else since (`nsenter ... -- sh`): the recorded name.
    raw.exe_ino = meta.ino() + 1;
    raw.exe_name = padded::<EXE_NAME_LEN>("nsenter");
    let detection = decode(&raw, &Index::default()).expect("reported");
    assert_eq!(detection.executable.as_deref(), Some("nsenter"));
    assert!(detection.message.contains("(nsenter)"), "{}", detection.message);
}

#[test]
fn a_host_namespace_file_is_named_as_its_proc_link_reads() {
    let host = [11, 12, 13, 14, 4026531840, 16];
    assert_eq!(decode::namespace_file(4026531840, &host).as_deref(), Some("net:[4026531840]"));
    assert_eq!(decode::namespace_file(13, &host).as_deref(), Some("mnt:[13]"));
    assert_eq!(decode::namespace_file(99, &host), None, "not a host namespace: the path stands");
    assert_eq!(decode::namespace_file(0, &[0; 6]), None, "unknown host namespaces match nothing");
}
