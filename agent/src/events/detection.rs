//! Kernel detection records → `Detection`s: the actor named from the model (cgroup → pod →
//! namespace → tenant) and /proc (executable, arguments, parent, container), the evidence
//! named from what the agent registered (inode → path). Drops what is normal after all: a
//! ptrace or /proc/PID/mem on a process of the actor's own pod.

use std::os::unix::fs::MetadataExt;

use moat_common::event::*;
use moat_common::guard::{FileKey, NS_COUNT};

use super::record::Detection;
use crate::compiler::Index;
use crate::config::GuardMode;
use crate::detections;
use crate::guard::syscalls::class_name;
use crate::guard::view::{view, GuardView};

/// NUL-padded kernel bytes to text.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `None` when the record turns out to be normal activity (see module doc).
pub fn decode(event: &GuardEvent, index: &Index) -> Option<Detection> {
    let view = view();
    let detection = u32::from(event.detection);
    let spec = detections::by_code(detection);
    let pod = index.pods_by_cgroup.get(&event.cgroup);
    if detection == DETECTION_PTRACE && same_pod(event, index, &view) {
        return None;
    }
    if event.evidence == EVIDENCE_NAMESPACES && host_namespaces_joined(event, &view.host_ns) == 0 {
        return None;
    }
    let blocked = event.blocked != 0;
    let process = Process::read(event.tgid);
    let executable = executable(event, &process);
    let (what, evidence) = evidence(event, &view);
    let action = match event.blocked {
        0 => "detected",
        GUARD_ACTION_KILLED => "killed",
        _ => "blocked",
    };
    Some(Detection {
        id: spec.map(|s| s.id).unwrap_or("unknown").to_string(),
        mode: if blocked { GuardMode::Block } else { GuardMode::Detect }.name().to_string(),
        severity: spec.map(|s| s.severity).unwrap_or("unknown").to_string(),
        tenant: pod.and_then(|p| index.tenant_of(p)).map(ToString::to_string),
        namespace: pod.map(|p| p.namespace.to_string()),
        pod: pod.map(|p| p.name.to_string()),
        pid: Some(event.tgid),
        executable: Some(executable.clone()),
        arguments: process.cmdline,
        parent_pid: (event.ppid != 0).then_some(event.ppid),
        parent_executable: (event.ppid != 0).then(|| Process::read(event.ppid).exe).flatten(),
        container: process.container,
        evidence: Some(evidence),
        action: action.to_string(),
        message: format!("{what} by pid {} ({executable}): {action}", event.tgid),
    })
}

/// (what happened, the evidence), from what the record carries (`GuardEvent::evidence`).
fn evidence(event: &GuardEvent, view: &GuardView) -> (String, String) {
    let subject = text(&event.subject);
    let file = FileKey { dev: event.dev, ino: event.ino };
    let named = view.names.get(&file).map(|p| p.display().to_string());
    let dentry = || {
        let name = text(&event.subject[..64]);
        let parent = text(&event.subject[64..]);
        named.clone().unwrap_or_else(|| {
            let on = kernel_fs(event.arg).map(|fs| format!(" on {fs}")).unwrap_or_default();
            format!("{}{on} (device {}:{}, inode {})", dentry_path(&parent, &name), event.dev >> 20, event.dev & 0xfffff, event.ino)
        })
    };
    let detection = u32::from(event.detection);
    match event.evidence {
        EVIDENCE_SYSCTL => (format!("write to /proc/sys/{subject}"), format!("/proc/sys/{subject}")),
        EVIDENCE_MKNOD => {
            let (major, minor) = (libc::major(event.arg as libc::dev_t), libc::minor(event.arg as libc::dev_t));
            (format!("mknod of block device {major}:{minor} at {subject}"), subject)
        }
        EVIDENCE_MOUNT => {
            let fstype = text(&event.subject[..MOUNT_FSTYPE_LEN]);
            let source = text(&event.subject[MOUNT_FSTYPE_LEN..MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN]);
            let target = text(&event.subject[MOUNT_FSTYPE_LEN + MOUNT_SOURCE_LEN..]);
            let call = class_name(event.owner);
            (format!("{call} of {fstype} ({source} on {target}, flags {:#x})", event.arg), format!("{call} type={fstype} source={source} target={target}"))
        }
        EVIDENCE_DEVICE => {
            let (major, minor) = (event.dev >> 20, event.dev & 0xfffff);
            let verb = if (event.arg >> 16) & 1 != 0 { "mknod" } else { "open" };
            (format!("{verb} of block device {major}:{minor}"), format!("block device {major}:{minor}"))
        }
        EVIDENCE_CALL if detection == DETECTION_SETNS => {
            ("unshare of a user namespace".into(), format!("unshare flags {:#x}", event.arg))
        }
        EVIDENCE_CALL => {
            let call = class_name(event.owner);
            (format!("{call}() from a pod"), format!("syscall {call} (first argument {})", event.arg))
        }
        EVIDENCE_TARGET => {
            let call = class_name(event.owner);
            (format!("{call} on pid {} outside the pod", event.target_pid), format!("{call} target pid {}", event.target_pid))
        }
        EVIDENCE_NAMESPACES => {
            let mask = host_namespaces_joined(event, &view.host_ns);
            let joined: Vec<&str> = ["uts", "ipc", "mnt", "pid", "net", "cgroup"]
                .iter()
                .take(NS_COUNT)
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, n)| *n)
                .collect();
            (format!("setns into the host's {} namespace", joined.join("+")), format!("host namespaces: {}", joined.join(",")))
        }
        EVIDENCE_SOCKET => {
            let socket = named.unwrap_or_else(|| format!("socket inode {}", event.ino));
            if subject.is_empty() {
                (format!("connect to container runtime socket {socket}"), socket)
            } else {
                (format!("connect to container runtime socket {socket} as {subject}"), format!("{subject} (runtime socket {socket})"))
            }
        }
        EVIDENCE_ADDRESS => {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&event.subject[..16]);
            let ip = std::net::Ipv6Addr::from(addr);
            let ip = ip.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(std::net::IpAddr::V6(ip));
            let target = format!("{ip}:{}", event.arg);
            if event.hook == GUARD_HOOK_CONNECT {
                (format!("connect to kubelet API port {target}"), target)
            } else {
                (format!("connect to the API server {target} after reading kubelet credentials"), target)
            }
        }
        EVIDENCE_FILE => match detection {
            DETECTION_KERNEL_SYSCTL => ("write to /sys/kernel/uevent_helper".into(), dentry()),
            DETECTION_CGROUP_RELEASE_AGENT => ("write to a cgroup v1 release file".into(), dentry()),
            DETECTION_SETNS => ("open of a host namespace".into(), namespace_file(event.ino, &view.host_ns).unwrap_or_else(dentry)),
            DETECTION_RUNTIME_BINARY => ("container runtime binary opened for writing".into(), dentry()),
            DETECTION_PTRACE => {
                let parent = text(&event.subject[64..]);
                (format!("open of /proc/{parent}/mem outside the pod"), format!("/proc/{parent}/mem"))
            }
            DETECTION_KERNEL_MEMORY => ("access to kernel memory or debug interfaces".into(), dentry()),
            DETECTION_KUBELET_PKI => ("kubelet credentials opened by a process that is not the kubelet".into(), dentry()),
            DETECTION_OTHER_POD_VOLUME => {
                let owner = view.pods_by_tag.get(&event.owner).map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_else(|| "an unknown pod".into());
                (format!("a volume of pod {owner} read"), format!("{} (volume of pod {owner})", dentry()))
            }
            code => (format!("detection code {code} on a file"), dentry()),
        },
        kind => (format!("detection code {detection} (evidence {kind})"), subject),
    }
}

/// A namespace file (nsfs has no path of its own) as its `/proc/PID/ns/*` link reads:
/// `net:[4026531840]`, for the host's namespaces the agent knows.
fn namespace_file(ino: u64, host: &[u32; NS_COUNT]) -> Option<String> {
    let names = ["uts", "ipc", "mnt", "pid", "net", "cgroup"];
    host.iter().zip(names).find(|(&host_ns, _)| host_ns != 0 && u64::from(host_ns) == ino).map(|(_, name)| format!("{name}:[{ino}]"))
}

/// The executable that acted. /proc gives its full path only while the process still runs
/// the file the kernel recorded (same inode, or on stacked filesystems whose devices differ,
/// the same name); after an exec (`nsenter ... -- sh`) the recorded file name stands, so the
/// event never names what ran afterwards.
fn executable(event: &GuardEvent, process: &Process) -> String {
    let recorded = text(&event.exe_name);
    if event.exe_ino == 0 || recorded.is_empty() {
        return process.exe.clone().unwrap_or_else(|| text(&event.comm));
    }
    let same_file = process.exe_id == Some((event.exe_dev, event.exe_ino));
    match &process.exe {
        Some(path) if same_file || path.rsplit('/').next() == Some(recorded.as_str()) => path.clone(),
        _ => recorded,
    }
}

/// The host namespaces (`NS_*` bits) a setns record says the thread joined: the one an nsfs
/// fd names, or those of `nstype` a pidfd put it in — leaving out namespaces it was in before
/// and those its pod shares with the host by design (hostNetwork, hostPID).
pub fn host_namespaces_joined(event: &GuardEvent, host: &[u32; NS_COUNT]) -> u64 {
    const NSFS_MAGIC: u64 = 0x6e73_6673;
    let requested = [libc::CLONE_NEWUTS, libc::CLONE_NEWIPC, libc::CLONE_NEWNS, libc::CLONE_NEWPID, libc::CLONE_NEWNET, libc::CLONE_NEWCGROUP];
    let slot = |offset: usize, i: usize| {
        let at = offset + 4 * i;
        u32::from_ne_bytes([event.subject[at], event.subject[at + 1], event.subject[at + 2], event.subject[at + 3]])
    };
    let mut joined = 0;
    for (i, &host_ns) in host.iter().enumerate() {
        if host_ns == 0 || event.target_pid & (1 << i) != 0 || slot(0, i) == host_ns {
            continue;
        }
        let into = if event.arg == NSFS_MAGIC {
            event.ino == u64::from(host_ns)
        } else {
            event.owner & requested[i] as u64 != 0 && slot(4 * NS_COUNT, i) == host_ns
        };
        if into {
            joined |= 1 << i;
        }
    }
    joined
}

/// `parent/name` of an opened file, from the two dentry names the kernel sent. A
/// filesystem's root dentry is named `/`: a file at the root is `/name`, the root itself `/`.
fn dentry_path(parent: &str, name: &str) -> String {
    if name == "/" {
        return name.to_string();
    }
    format!("{}/{name}", parent.trim_end_matches('/'))
}

/// The kernel interfaces file detections match by filesystem (`GuardEvent::arg` carries the
/// superblock magic for file findings).
fn kernel_fs(magic: u64) -> Option<&'static str> {
    match magic {
        0x0027_e0eb => Some("cgroup"),
        0x6265_6572 => Some("sysfs"),
        0x9fa0 => Some("proc"),
        0x6462_6720 => Some("debugfs"),
        0x7472_6163 => Some("tracefs"),
        _ => None,
    }
}

/// A ptrace/process_vm_writev or /proc/PID/mem whose target is in the actor's own pod.
/// Outside the host's PID namespace a pod names only its own processes; with hostPID (or
/// the host's /proc mounted in) the PID is global and the target's cgroup tells its pod.
fn same_pod(event: &GuardEvent, index: &Index, view: &GuardView) -> bool {
    let (pid, global) = if event.evidence == EVIDENCE_TARGET {
        // The actor's PID namespace as the kernel saw it at the call (`ino`); /proc is only
        // a fallback, the actor may have exited before its record is decoded.
        let actor_ns = if event.ino != 0 {
            Some(event.ino)
        } else {
            std::fs::metadata(format!("/proc/{}/ns/pid", event.tgid)).map(|m| m.ino()).ok()
        };
        (event.target_pid, actor_ns.is_none_or(|ns| ns == view.host_pid_ns))
    } else {
        let Ok(pid) = text(&event.subject[64..]).parse::<u32>() else { return false };
        (pid, view.host_proc_dev == 0 || event.dev == view.host_proc_dev)
    };
    if !global {
        return true;
    }
    let Some(target) = cgroup_of(pid) else { return false };
    let actor_pod = index.pods_by_cgroup.get(&event.cgroup);
    target == event.cgroup || (actor_pod.is_some() && index.pods_by_cgroup.get(&target) == actor_pod)
}

fn cgroup_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = crate::node::cgroup_ns::unified_path(&text)?;
    let mount = crate::node::mounts::cgroup2().ok()?;
    // Relative to the agent's cgroup namespace (`/../..` for a pod, from a container's own).
    std::fs::metadata(crate::node::cgroup_ns::current(&mount).dir(&mount, &path)).ok().map(|m| m.ino())
}

/// What /proc still says about a process (it may have exited already).
#[derive(Default)]
struct Process {
    exe: Option<String>,
    /// The executable's (device in kernel encoding, inode), as the kernel records them.
    exe_id: Option<(u64, u64)>,
    cmdline: Option<String>,
    container: Option<String>,
}

impl Process {
    fn read(pid: u32) -> Self {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
        let exe_id = std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (moat_common::guard::kernel_dev(libc::major(m.dev()), libc::minor(m.dev())), m.ino()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok().filter(|b| !b.is_empty()).map(|bytes| {
            bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
        });
        let container = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|t| {
            let path = t.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
            container_id(&path)
        });
        Self { exe, exe_id, cmdline, container }
    }
}

/// The container id in a cgroup path's last component (`cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, or a bare cgroupfs `<id>`).
pub fn container_id(cgroup_path: &str) -> Option<String> {
    let last = cgroup_path.rsplit('/').next()?.trim_end_matches(".scope");
    let id = ["cri-containerd-", "crio-", "docker-", "libpod-"].iter().find_map(|p| last.strip_prefix(p)).unwrap_or(last);
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
#[path = "detection_tests.rs"]
mod tests;
