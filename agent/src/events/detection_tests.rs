use super::*;
use crate::compiler::Index;
use crate::guard::kernel_maps;
use crate::guard::view::publish;
use crate::model::{PodKey, TenantName};

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
    index.namespace_tenants.insert(pod.namespace.clone(), TenantName::Label("alpha".into()));
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
    let joined = |raw: &GuardEvent| host_namespaces_joined(raw, &host);
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
    publish(GuardView { host_pid_ns, ..Default::default() });
    let mut index = Index::default();
    let cgroup = own_cgroup();
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
    publish(GuardView { host_pid_ns, ..Default::default() });
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
    assert_eq!(namespace_file(4026531840, &host).as_deref(), Some("net:[4026531840]"));
    assert_eq!(namespace_file(13, &host).as_deref(), Some("mnt:[13]"));
    assert_eq!(namespace_file(99, &host), None, "not a host namespace: the path stands");
    assert_eq!(namespace_file(0, &[0; 6]), None, "unknown host namespaces match nothing");
}

/// The cgroup id of the calling process.
fn own_cgroup() -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").to_string();
    cgroup_of(std::process::id()).unwrap_or_else(|| panic!("cgroup of {path}"))
}
