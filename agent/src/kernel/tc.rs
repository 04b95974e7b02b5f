//! The ICMP program (`moat_icmp_ingress`) on a pod's interfaces, tc ingress.
//!
//! With TCX (Linux >= 6.6) each attachment is a bpf_link pinned in the pod's pin directory as
//! `<netns inode>-<ifindex>`: it outlives the agent, and a restarted agent adopts it by
//! swapping its own program into the pinned link (`bpf_link_update`: atomic, so there is
//! neither a gap nor a second copy). It goes first in the interface's TCX chain, so no other
//! program can accept an echo request before it is decided. Without TCX the program is a
//! cls_bpf filter on the clsact qdisc at a fixed priority and handle; it too stays when the
//! agent exits, and the next agent replaces its program in place.
//!
//! Everything but `load` runs on a thread inside the pod's network namespace
//! (`node::netns::run_in`): interface names and indexes, netlink and TCX all resolve there.

use std::collections::BTreeSet;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self as aya_tc, NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TcHandle};
use aya::util::KernelVersion;
use aya::Ebpf;

use super::{error_chain as chain, KernelError};
use crate::config::TcAttach;
use crate::node::netns::{self, Interface, NetnsId};

pub const PROGRAM: &str = "moat_icmp_ingress";
pub const HOOK: &str = "tc/ingress";

/// Netlink mode: priority 1 runs before filters added with tc's defaults; the handle ("mo",
/// "at") marks the filter as moat's.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: TcHandle = TcHandle::new(0x6d6f, 0x6174);

/// How the program attaches to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcx,
    Netlink,
}

impl Mode {
    /// `auto`: TCX where the kernel has it (6.6), netlink otherwise.
    pub fn choose(config: TcAttach) -> Self {
        match config {
            TcAttach::Tcx => Self::Tcx,
            TcAttach::Netlink => Self::Netlink,
            TcAttach::Auto => match KernelVersion::current() {
                Ok(version) if version >= KernelVersion::new(6, 6, 0) => Self::Tcx,
                _ => Self::Netlink,
            },
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// What attaching did on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new link (or filter).
    Created,
    /// An earlier agent's link (or filter), now running this agent's program.
    Adopted,
    /// This agent's already.
    Kept,
}

fn fail(message: String) -> KernelError {
    KernelError::Program { program: PROGRAM, hook: HOOK, message }
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, KernelError> {
    let program = ebpf.program_mut(PROGRAM).ok_or_else(|| fail("missing from the object".into()))?;
    program.try_into().map_err(|e| fail(format!("{e}")))
}

/// Loads the program (attached nowhere yet); returns its id, which tells this agent's links
/// from an earlier agent's.
pub fn load(ebpf: &mut Ebpf) -> Result<u32, KernelError> {
    let program = program(ebpf)?;
    program.load().map_err(|e| fail(format!("load: {}", chain(&e))))?;
    let info = program.info().map_err(|e| fail(format!("load: {}", chain(&e))))?;
    Ok(info.id())
}

/// Puts the program on every non-loopback interface of the calling thread's network
/// namespace `netns`, and drops this pod's pins (in `pin_dir`) for interfaces or namespaces
/// it no longer has. Returns the interfaces now carrying the program.
pub fn attach_here(
    program: &mut SchedClassifier,
    program_id: u32,
    mode: Mode,
    pin_dir: &Path,
    netns: NetnsId,
) -> Result<Vec<(Interface, Outcome)>, KernelError> {
    let interfaces = netns::interfaces().map_err(|e| fail(format!("listing interfaces: {e}")))?;
    let mut pins = BTreeSet::new();
    let mut done = Vec::new();
    for interface in interfaces {
        let result = match mode {
            Mode::Tcx => {
                let name = format!("{}-{}", netns.ino, interface.index);
                let result = tcx(program, program_id, &interface, &pin_dir.join(&name));
                pins.insert(name);
                result
            }
            Mode::Netlink => netlink(program, &interface),
        };
        let outcome = result
            .map_err(|message| fail(format!("attach to {} (ifindex {}): {message}", interface.name, interface.index)))?;
        done.push((interface, outcome));
    }
    remove_pins_except(pin_dir, &pins)?;
    Ok(done)
}

fn tcx(program: &mut SchedClassifier, program_id: u32, interface: &Interface, pin: &Path) -> Result<Outcome, String> {
    if pin.exists() {
        match adopt(program, program_id, interface, pin) {
            Ok(Some(outcome)) => return Ok(outcome),
            // Not attached here after all (the interface was replaced): attach afresh.
            Ok(None) | Err(_) => std::fs::remove_file(pin).map_err(|e| format!("removing stale pin {}: {e}", pin.display()))?,
        }
    }
    if let Some(parent) = pin.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let id = program
        .attach_with_options(&interface.name, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::first()))
        .map_err(|e| chain(&e))?;
    let link = program.take_link(id).map_err(|e| chain(&e))?;
    let link: FdLink = link.try_into().map_err(|e| format!("not a bpf_link: {e}"))?;
    link.pin(pin).map_err(|e| format!("pinning {}: {}", pin.display(), chain(&e)))?;
    Ok(Outcome::Created)
}

/// Makes the link pinned at `pin` run this agent's program (a link from an earlier agent gets
/// it swapped in); None if the link is not attached to `interface` after all.
fn adopt(program: &mut SchedClassifier, program_id: u32, interface: &Interface, pin: &Path) -> Result<Option<Outcome>, String> {
    let link = FdLink::from(PinnedLink::from_pin(pin).map_err(|e| chain(&e))?);
    let info = link.info().map_err(|e| chain(&e))?;
    let outcome = if info.program_id() == program_id { Outcome::Kept } else { Outcome::Adopted };
    if outcome == Outcome::Adopted {
        let link = SchedClassifierLink::try_from(link).map_err(|e| chain(&e))?;
        let id = program.attach_to_link(link).map_err(|e| chain(&e))?;
        // Only this handle is dropped: the pin keeps the link.
        drop(program.take_link(id).map_err(|e| chain(&e))?);
    }
    let (_, attached) = SchedClassifier::query_tcx(&interface.name, TcAttachType::Ingress).map_err(|e| chain(&e))?;
    Ok(attached.iter().any(|info| info.id() == program_id).then_some(outcome))
}

fn netlink(program: &mut SchedClassifier, interface: &Interface) -> Result<Outcome, String> {
    // Fails when the qdisc exists already; a real failure shows in the attach below.
    let _ = aya_tc::qdisc_add_clsact(&interface.name);
    let options = || TcAttachOptions::Netlink(NlOptions { priority: NL_PRIORITY, handle: NL_HANDLE, classid: None });
    let (id, outcome) = match program.attach_with_options(&interface.name, TcAttachType::Ingress, options()) {
        Ok(id) => (id, Outcome::Created),
        // Our filter is there already (an earlier agent's): replace its program in place.
        Err(create) => {
            let existing = SchedClassifierLink::attached(&interface.name, TcAttachType::Ingress, NL_PRIORITY, NL_HANDLE, None)
                .map_err(|e| e.to_string())?;
            let id = program
                .attach_to_link(existing)
                .map_err(|replace| format!("create: {}; replace: {}", chain(&create), chain(&replace)))?;
            (id, Outcome::Adopted)
        }
    };
    let link = program.take_link(id).map_err(|e| chain(&e))?;
    // Dropping aya's handle would delete the filter; like a pinned link it must outlive the
    // agent (and goes with the interface).
    std::mem::forget(link);
    Ok(outcome)
}

/// Removes the pins in `dir` not named in `keep` (unpinning detaches a link nothing else
/// holds). A missing directory has nothing to remove.
fn remove_pins_except(dir: &Path, keep: &BTreeSet<String>) -> Result<(), KernelError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        if keep.contains(&*entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        std::fs::remove_file(&path).map_err(|e| KernelError::LinkPin { path: path.clone(), message: e.to_string() })?;
    }
    Ok(())
}

/// Removes a pod's pins (the pod is gone from this node).
pub fn remove_pod(dir: &Path) -> Result<(), KernelError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(KernelError::LinkPin { path: dir.into(), message: e.to_string() })
        }
        _ => Ok(()),
    }
}
