//! What opening a file means: a protected file by inode (kubelet credentials, runtime
//! binaries), another pod's volume by superblock, or a dangerous kernel interface by
//! filesystem and name (cgroup v1 release_agent, uevent_helper, kcore, sysrq-trigger,
//! /proc/PID/mem, debugfs/tracefs). Matching by inode and superblock, not path, means an
//! alias (a hostPath mount of /var/lib/kubelet at /host/...) matches all the same.

use moat_common::event::{
    DETECTION_CGROUP_RELEASE_AGENT, DETECTION_KERNEL_MEMORY, DETECTION_KERNEL_SYSCTL,
    DETECTION_KUBELET_PKI, DETECTION_OTHER_POD_VOLUME, DETECTION_PTRACE,
    DETECTION_RUNTIME_BINARY, DETECTION_SETNS, EVIDENCE_FILE, GUARD_MODE_BLOCK, GUARD_MODE_OFF,
};
use moat_common::guard::{
    FileKey, GuardSettings, DEVICE_HOLDS_FILES, DEVICE_POD_VOLUME, FILE_KUBELET_CREDENTIAL, FILE_POD_VOLUME, FILE_RUNTIME_BINARY,
    NS_COUNT,
};

use super::actor::{self, Actor};
use super::bytes::eq;
use super::kernel::{self, FileId, FMODE_WRITE};
use super::report;
use crate::maps::{GUARD_DEVICES, GUARD_FILES, GUARD_TAINTED};

const CGROUP_SUPER_MAGIC: u64 = 0x27e0eb;
const SYSFS_MAGIC: u64 = 0x62656572;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const DEBUGFS_MAGIC: u64 = 0x64626720;
const TRACEFS_MAGIC: u64 = 0x74726163;
const NSFS_MAGIC: u64 = 0x6e736673;

/// Bytes of a name compared; the longest we look for is `notify_on_release`.
const NAME: usize = 24;

/// A file open some detection names.
pub struct Finding {
    pub detection: u32,
    pub id: FileId,
    /// The owning pod of another pod's volume.
    pub owner: u64,
    pub dentry: usize,
}

/// Where a file open is seen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// BPF LSM, before the open happens: opening a host namespace file (the first half of
    /// `setns`) can still be refused here; elsewhere the setns probe reports the join.
    Lsm,
    /// fentry at security_file_open.
    Fentry,
    /// The open's syscall exit.
    Syscall,
}

/// What an opened file may be to some detection, found from the file alone. Most opens
/// (a regular file, not protected, on no pod's volume) are none of these and end here,
/// before the actor is looked up: that costs more than this (a hash lookup and helpers).
#[derive(Clone, Copy)]
enum Candidate {
    /// A protected file (`GUARD_FILES`): its class and, for a pod volume's file, its owner.
    Protected { class: u32, owner: u64 },
    /// A file on a pod's volume mounted on its own (`GUARD_DEVICES`): the owning pod.
    Volume(u64),
    /// A kernel interface's filesystem: cgroup, sysfs, proc, debugfs, tracefs (and nsfs
    /// where the open is seen by BPF LSM).
    KernelFs,
}

/// An opened file that may concern a detection, to be judged for its actor (`classify`).
#[derive(Clone, Copy)]
pub struct Opened {
    file: usize,
    id: FileId,
    candidate: Candidate,
}

/// The opened `file` if it may concern some detection; `None` for every other file,
/// whoever opened it.
#[inline(always)]
pub fn candidate(file: usize, via: Via) -> Option<Opened> {
    // A security hook's `file` is a BTF pointer; the syscall's, read from the fd table, is not.
    let id = if via == Via::Syscall { kernel::file_id(file)? } else { kernel::btf_file_id(file)? };
    // The filesystem first: most opens are on one that holds no protected file and is no
    // pod's volume (a container's root), and end after this one lookup.
    // SAFETY: plain-data key; the value is copied out at once.
    let device = unsafe { GUARD_DEVICES.get(&id.dev) }.copied().unwrap_or_default();
    let protected = if device.flags & DEVICE_HOLDS_FILES != 0 {
        // SAFETY: as above.
        unsafe { GUARD_FILES.get(&FileKey { dev: id.dev, ino: id.ino }) }
    } else {
        None
    };
    let candidate = if let Some(rule) = protected {
        Candidate::Protected { class: rule.class, owner: rule.owner }
    } else if device.flags & DEVICE_POD_VOLUME != 0 {
        Candidate::Volume(device.owner)
    } else if matches!(id.magic, CGROUP_SUPER_MAGIC | SYSFS_MAGIC | PROC_SUPER_MAGIC | DEBUGFS_MAGIC | TRACEFS_MAGIC)
        || (via == Via::Lsm && id.magic == NSFS_MAGIC)
    {
        Candidate::KernelFs
    } else {
        return None;
    };
    Some(Opened { file, id, candidate })
}

/// What opening the file means for `actor`, if anything. `/proc/PID/mem` is only
/// classified at the syscall: where security hooks run, the ptrace hook sees that open with
/// its target task (and can tell the actor's own processes apart in the kernel, which a
/// refusal needs).
#[inline(always)]
pub fn classify(opened: &Opened, settings: &GuardSettings, actor: &Actor, via: Via) -> Option<Finding> {
    let Opened { file, id, candidate } = *opened;
    let write = || kernel::file_mode(file) & FMODE_WRITE != 0;
    let found = |detection: u32, owner: u64| {
        if report::mode(detection) == GUARD_MODE_OFF {
            return None;
        }
        Some(Finding { detection, id, owner, dentry: kernel::file_dentry(file).unwrap_or(0) })
    };
    match candidate {
        Candidate::Protected { class, owner } => {
            if class == FILE_KUBELET_CREDENTIAL && !actor::is_kubelet(settings, actor) {
                return found(DETECTION_KUBELET_PKI, 0);
            }
            if class == FILE_RUNTIME_BINARY && actor.in_pod && write() {
                return found(DETECTION_RUNTIME_BINARY, 0);
            }
            if class == FILE_POD_VOLUME && actor.in_pod && owner != actor.pod {
                return found(DETECTION_OTHER_POD_VOLUME, owner);
            }
            return None;
        }
        // Host processes (the kubelet writes pods' volumes) concern nothing below.
        _ if !actor.in_pod => return None,
        Candidate::Volume(owner) => {
            return if owner != actor.pod { found(DETECTION_OTHER_POD_VOLUME, owner) } else { None };
        }
        Candidate::KernelFs => {}
    }
    if via == Via::Lsm && id.magic == NSFS_MAGIC {
        let mut i = 0;
        while i < NS_COUNT {
            if settings.host_ns[i] != 0 && settings.host_ns[i] as u64 == id.ino && report::mode(DETECTION_SETNS) == GUARD_MODE_BLOCK {
                // A namespace the pod shares with the host already (hostPID, hostNetwork)
                // is no escape: joining it changes nothing.
                let own = kernel::current_namespaces();
                return if own[i] as u64 == id.ino { None } else { found(DETECTION_SETNS, 0) };
            }
            i += 1;
        }
        return None;
    }
    if id.magic == DEBUGFS_MAGIC || id.magic == TRACEFS_MAGIC {
        return found(DETECTION_KERNEL_MEMORY, 0);
    }
    let dentry = kernel::file_dentry(file)?;
    let mut name = [0u8; NAME];
    let len = kernel::dentry_name(dentry, &mut name);
    let write = write();
    match id.magic {
        CGROUP_SUPER_MAGIC if write && (eq(&name, len, b"release_agent") || eq(&name, len, b"notify_on_release")) => {
            found(DETECTION_CGROUP_RELEASE_AGENT, 0)
        }
        SYSFS_MAGIC if write && eq(&name, len, b"uevent_helper") => found(DETECTION_KERNEL_SYSCTL, 0),
        PROC_SUPER_MAGIC if eq(&name, len, b"kcore") => found(DETECTION_KERNEL_MEMORY, 0),
        PROC_SUPER_MAGIC if write && eq(&name, len, b"sysrq-trigger") => found(DETECTION_KERNEL_MEMORY, 0),
        // /proc/PID/mem (and /proc/PID/task/TID/mem): the agent reads the PID from the
        // parent's name and drops opens within the actor's own pod.
        PROC_SUPER_MAGIC if via == Via::Syscall && eq(&name, len, b"mem") => found(DETECTION_PTRACE, 0),
        _ => None,
    }
}

/// Reports a finding: the file's name and its parent's in the subject (`name`, then at
/// byte 64 the parent's), identity in dev/ino. Opening kubelet credentials taints the
/// process for `cred.kubelet-api`.
#[inline(always)]
pub fn report(finding: &Finding, hook: u8, blocked: bool, actor: &Actor, tgid: u32, now: u64) {
    if finding.detection == DETECTION_KUBELET_PKI {
        // Best effort: a full map evicts the oldest taint (LRU).
        let _ = GUARD_TAINTED.insert(&tgid, &now, 0);
    }
    report::emit(finding.detection, hook, blocked, actor, EVIDENCE_FILE, |event| {
    // SAFETY: `event` is the reserved record.
    unsafe {
        (*event).dev = finding.id.dev;
        (*event).ino = finding.id.ino;
        (*event).owner = finding.owner;
        (*event).arg = finding.id.magic;
        if finding.dentry != 0 {
            let subject = &mut (*event).subject;
            kernel::dentry_name(finding.dentry, &mut subject[..64]);
            if let Some(parent) = kernel::dentry_parent(finding.dentry) {
                kernel::dentry_name(parent, &mut subject[64..]);
            }
        }
    }
    });
}
