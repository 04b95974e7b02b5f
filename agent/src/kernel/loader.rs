//! Loads the eBPF object, adopting pinned maps, and attaches the programs at the pods'
//! cgroup root through pinned links that outlive the agent.
//!
//! Replacing a running agent's programs never opens a gap: the new link is attached and
//! pinned first, and only then are the older links of the same program detached. While both
//! run they share every map, so they decide alike.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aya::programs::links::{FdLink, PinnedLink};
use std::os::fd::AsFd;

use aya::programs::{CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSysctl, Program};
use moat_common::budget::{names as budget_names, EventBudget};
use moat_common::layout::KernelLayout;
use aya::maps::ProgramArray;
use aya::{Ebpf, EbpfLoader};
use moat_common::maps::{names, STAGE_DECIDE, STAGE_DNS};

use super::bpffs::PinDirs;
use super::cgroup_link;
use super::{error_chain as chain, KernelError};

pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/moat-programs"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    SkbIngress,
    SkbEgress,
    SockAddr,
    /// Runtime guard: sysctl reads and writes (`escape.kernel-sysctl`).
    Sysctl,
    /// Runtime guard: device access (`escape.host-mount`, block devices).
    Device,
    /// Runtime guard: AF_UNIX connects (`escape.runtime-socket`), Linux 6.7+.
    UnixConnect,
    /// DNS isolation over TCP: pods' connections to port 53 (`dns_tcp`).
    SockOps,
    /// DNS isolation over TCP: what pods send on them (`dns_tcp`).
    SkMsg,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Self::SkbIngress => "cgroup_skb/ingress",
            Self::SkbEgress => "cgroup_skb/egress",
            Self::SockAddr => "cgroup/sock_addr",
            Self::Sysctl => "cgroup/sysctl",
            Self::Device => "cgroup/dev",
            Self::UnixConnect => "cgroup/connect_unix",
            Self::SockOps => "sockops",
            Self::SkMsg => "sk_msg",
        }
    }
}

/// Every program and where it attaches.
pub const PROGRAMS: [(&str, Hook); 8] = [
    ("moat_ingress", Hook::SkbIngress),
    ("moat_egress", Hook::SkbEgress),
    ("moat_connect4", Hook::SockAddr),
    ("moat_connect6", Hook::SockAddr),
    ("moat_sendmsg4", Hook::SockAddr),
    ("moat_sendmsg6", Hook::SockAddr),
    ("moat_sysctl", Hook::Sysctl),
    ("moat_device", Hook::Device),
];

/// The packet programs' later stages: (program, hook, array, slot). Verified with the other
/// programs, written into their slots just before the packet programs attach; a new agent's
/// stages then serve an older agent's programs for the moment both run, as its maps do.
pub const STAGES: [(&str, Hook, &str, u32); 3] = [
    ("moat_decide_out", Hook::SkbEgress, names::EGRESS_STAGES, STAGE_DECIDE),
    ("moat_dns_out", Hook::SkbEgress, names::EGRESS_STAGES, STAGE_DNS),
    ("moat_decide_in", Hook::SkbIngress, names::INGRESS_STAGES, STAGE_DECIDE),
];

/// Loads the object. Maps already pinned under `dirs.maps` are reused with their contents.
/// `layout` tells the guard programs where to read kernel structures (all zero: they stay
/// idle).
pub fn load(dirs: &PinDirs, layout: &KernelLayout) -> Result<Ebpf, KernelError> {
    load_budgeted(dirs, layout, &EventBudget::default())
}

/// [`load`], with the event budgets the programs admit events at (`events::budget`).
pub fn load_budgeted(dirs: &PinDirs, layout: &KernelLayout, budget: &EventBudget) -> Result<Ebpf, KernelError> {
    EbpfLoader::new()
        .default_map_pin_directory(&dirs.maps)
        .override_global("KERNEL_LAYOUT", layout, true)
        .override_global(budget_names::EVENT_BUDGET, budget, true)
        .load(OBJECT)
        .map_err(|source| KernelError::Load { pin_dir: dirs.maps.clone(), source: Box::new(source) })
}

/// Loads `moat_connect_unix` by hand (see `unix_connect`). Call before any map leaves `ebpf`.
pub fn load_unix_connect(ebpf: &Ebpf) -> Result<std::os::fd::OwnedFd, KernelError> {
    super::unix_connect::load(OBJECT, ebpf).map_err(|message| KernelError::Program {
        program: super::unix_connect::PROGRAM,
        hook: super::unix_connect::HOOK,
        message: format!("load: {message}"),
    })
}

/// Attaches `moat_connect_unix` at the pods' cgroup root like the other cgroup programs,
/// then detaches what an earlier agent left.
pub fn attach_unix_connect(program: &std::os::fd::OwnedFd, cgroup_root: &Path, dirs: &PinDirs) -> Result<Attached, KernelError> {
    let name = super::unix_connect::PROGRAM;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let pin = dirs.links.join(format!("{name}@{stamp}"));
    super::unix_connect::attach(program, cgroup_root, &pin)
        .map_err(|message| KernelError::Program { program: name, hook: super::unix_connect::HOOK, message })?;
    let attached = Attached { program: name, hook: Hook::UnixConnect, pin };
    detach_older(&dirs.links, &attached)?;
    Ok(attached)
}

/// An attached program and the pin that keeps it attached.
#[derive(Clone, Debug)]
pub struct Attached {
    pub program: &'static str,
    pub hook: Hook,
    pub pin: PathBuf,
}

/// Attaches every program to `cgroup_root`, then detaches links an earlier agent left.
/// cgroup bpf_links take no attach flags: several links on one cgroup always run together.
/// Verifies the programs [`attach_all`] attaches. The verifier needs the maps, not their
/// content, so this runs while the cluster is still being listed; `attach_all` loads any
/// program not loaded yet.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    // The stages are verified now too, but written into their slots only when this agent attaches.
    let stages = STAGES.iter().map(|(name, hook, _, _)| (*name, *hook));
    for (name, hook) in PROGRAMS.into_iter().chain(stages) {
        let program = ebpf.program_mut(name).ok_or_else(|| KernelError::Program { program: name, hook: hook.name(), message: "missing from the object".into() })?;
        load_once(program, hook).map_err(|message| KernelError::Program { program: name, hook: hook.name(), message })?;
    }
    Ok(())
}

/// Loads the stages and writes each into its slot (idempotent).
pub fn arm_stages(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    for (name, hook, array, slot) in STAGES {
        let fail = |message: String| KernelError::Program { program: name, hook: hook.name(), message };
        let program = ebpf.program_mut(name).ok_or_else(|| fail("missing from the object".into()))?;
        load_once(program, hook).map_err(fail)?;
        let program: &mut CgroupSkb = program.try_into().map_err(|e| fail(format!("{e}")))?;
        let fd = program.fd().map_err(|e| fail(format!("{e}")))?.try_clone().map_err(|e| fail(format!("{e}")))?;
        let map = ebpf.map_mut(array).ok_or_else(|| KernelError::map(array, "missing from the object"))?;
        let mut slots = ProgramArray::try_from(map).map_err(|e| KernelError::map(array, e))?;
        slots.set(slot, &fd, 0).map_err(|e| fail(format!("write into {array}[{slot}]: {}", chain(&e))))?;
    }
    Ok(())
}

fn load_once(program: &mut Program, hook: Hook) -> Result<(), String> {
    if program.fd().is_ok() {
        return Ok(());
    }
    let loaded = match hook {
        Hook::SkbIngress | Hook::SkbEgress => <&mut CgroupSkb>::try_from(program).map_err(|e| e.to_string())?.load(),
        Hook::SockAddr => <&mut CgroupSockAddr>::try_from(program).map_err(|e| e.to_string())?.load(),
        Hook::Sysctl => <&mut CgroupSysctl>::try_from(program).map_err(|e| e.to_string())?.load(),
        Hook::Device => <&mut CgroupDevice>::try_from(program).map_err(|e| e.to_string())?.load(),
        Hook::UnixConnect | Hook::SockOps | Hook::SkMsg => return Err("loaded where it is attached".into()),
    };
    loaded.map_err(|e| format!("load: {}", chain(&e)))
}

pub fn attach_all(ebpf: &mut Ebpf, cgroup_root: &Path, dirs: &PinDirs) -> Result<Vec<Attached>, KernelError> {
    let cgroup = File::open(cgroup_root)
        .map_err(|source| KernelError::CgroupRoot { path: cgroup_root.into(), source })?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    arm_stages(ebpf)?;
    let mut attached = Vec::new();
    for (name, hook) in PROGRAMS {
        let fail = |message: String| KernelError::Program { program: name, hook: hook.name(), message };
        let program = ebpf.program_mut(name).ok_or_else(|| fail("missing from the object".into()))?;
        load_once(program, hook).map_err(fail)?;
        let pin = dirs.links.join(format!("{name}@{stamp}"));
        let link: FdLink = match hook {
            Hook::SkbIngress | Hook::SkbEgress => {
                let program: &mut CgroupSkb = program.try_into().map_err(|e| fail(format!("{e}")))?;
                let kind = if hook == Hook::SkbIngress { CgroupSkbAttachType::Ingress } else { CgroupSkbAttachType::Egress };
                let id = program
                    .attach(&cgroup, kind, CgroupAttachMode::Single)
                    .map_err(|e| fail(format!("attach to {}: {}", cgroup_root.display(), chain(&e))))?;
                let link = program.take_link(id).map_err(|e| fail(format!("{e}")))?;
                link.try_into().map_err(|e| fail(format!("not a bpf_link: {e}")))?
            }
            Hook::SockAddr => {
                let program: &mut CgroupSockAddr = program.try_into().map_err(|e| fail(format!("{e}")))?;
                let id = program
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| fail(format!("attach to {}: {}", cgroup_root.display(), chain(&e))))?;
                let link = program.take_link(id).map_err(|e| fail(format!("{e}")))?;
                link.try_into().map_err(|e| fail(format!("not a bpf_link: {e}")))?
            }
            Hook::Sysctl => {
                let program: &mut CgroupSysctl = program.try_into().map_err(|e| fail(format!("{e}")))?;
                let fd = program.fd().map_err(|e| fail(format!("{e}")))?;
                cgroup_link::attach_pinned(fd.as_fd(), cgroup.as_fd(), cgroup_link::BPF_CGROUP_SYSCTL, &pin)
                    .map_err(|e| fail(format!("attach to {}: {e}", cgroup_root.display())))?;
                attached.push(Attached { program: name, hook, pin });
                continue;
            }
            Hook::UnixConnect => return Err(fail("attached by attach_unix_connect".into())),
            Hook::SockOps | Hook::SkMsg => return Err(fail("attached by dns_tcp::attach".into())),
            Hook::Device => {
                let program: &mut CgroupDevice = program.try_into().map_err(|e| fail(format!("{e}")))?;
                let fd = program.fd().map_err(|e| fail(format!("{e}")))?;
                cgroup_link::attach_pinned(fd.as_fd(), cgroup.as_fd(), cgroup_link::BPF_CGROUP_DEVICE, &pin)
                    .map_err(|e| fail(format!("attach to {}: {e}", cgroup_root.display())))?;
                attached.push(Attached { program: name, hook, pin });
                continue;
            }
        };
        link.pin(&pin).map_err(|e| KernelError::LinkPin { path: pin.clone(), message: e.to_string() })?;
        attached.push(Attached { program: name, hook, pin });
    }
    for current in &attached {
        detach_older(&dirs.links, current)?;
    }
    retire_other_layouts(dirs)?;
    Ok(attached)
}

/// After an upgrade that changed the map layout, the previous agent's programs still run from
/// `v<old>/`. Once this agent's programs are attached, detach those and drop their maps.
fn retire_other_layouts(dirs: &PinDirs) -> Result<(), KernelError> {
    let Ok(entries) = std::fs::read_dir(&dirs.instance) else { return Ok(()) };
    let current = format!("v{}", moat_common::LAYOUT_VERSION);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == current || !name.starts_with('v') {
            continue;
        }
        tracing::info!(layout = %name, "retiring programs and maps of an older layout");
        let links = entry.path().join("links");
        for link in std::fs::read_dir(&links).into_iter().flatten().flatten() {
            if let Ok(pinned) = PinnedLink::from_pin(link.path()) {
                drop(pinned.unpin());
            }
        }
        remove_pins(&entry.path())?;
    }
    Ok(())
}

/// Removes a directory of pins. Unlinking a pin drops the kernel object once unused.
pub fn remove_pins(dir: &Path) -> Result<(), KernelError> {
    std::fs::remove_dir_all(dir).map_err(|e| KernelError::LinkPin { path: dir.into(), message: e.to_string() })
}

/// Unpins (and so detaches) every link of `current.program` other than `current.pin`.
fn detach_older(links_dir: &Path, current: &Attached) -> Result<(), KernelError> {
    detach_links(links_dir, current.program, Some(&current.pin))
}

/// Unpins (and so detaches) every pinned link of `program` but `keep`.
pub fn detach_links(links_dir: &Path, program: &str, keep: Option<&Path>) -> Result<(), KernelError> {
    let entries = std::fs::read_dir(links_dir)
        .map_err(|e| KernelError::LinkPin { path: links_dir.into(), message: e.to_string() })?;
    let prefix = format!("{program}@");
    for entry in entries.flatten() {
        let path = entry.path();
        let is_other = entry.file_name().to_string_lossy().starts_with(&prefix) && Some(path.as_path()) != keep;
        if !is_other {
            continue;
        }
        let unpinned = PinnedLink::from_pin(&path)
            .map_err(|e| e.to_string())
            .and_then(|link| link.unpin().map_err(|e| e.to_string()));
        match unpinned {
            Ok(link) => drop(link),
            Err(message) => {
                tracing::warn!(pin = %path.display(), %message, "stale link pin could not be opened; removing it");
                std::fs::remove_file(&path)
                    .map_err(|e| KernelError::LinkPin { path: path.clone(), message: e.to_string() })?;
            }
        }
    }
    Ok(())
}

/// Pins of links currently in place, for status reporting.
pub fn pinned_links(dirs: &PinDirs) -> Vec<PathBuf> {
    std::fs::read_dir(&dirs.links)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
