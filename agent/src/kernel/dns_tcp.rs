//! Tenant DNS isolation over TCP: `moat_dns_msg` (sk_msg) on `DNS_SOCKETS`, then
//! `moat_dns_sockops` (sock_ops) at the pods' cgroup root, which fills that map with pods'
//! connections to port 53. Optional: a kernel that refuses either leaves TCP questions
//! uninspected (shown in `moat status`); UDP isolation and everything else still enforce.
//!
//! The sk_msg attachment lives with the map, not with this process (as the pinned links of
//! the cgroup programs do): the map lives as long as the sock_ops program that fills it. A
//! new agent's sock_ops link replaces the old one; connections opened before stay with the
//! old map and program until they close.

use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::SockHash;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, Program, ProgramError, SkMsg, SockOps};
use aya::Ebpf;
use moat_common::dns::names::DNS_SOCKETS;

use super::loader::{detach_links, Attached, Hook};
use super::{error_chain as chain, KernelError};

pub const SOCKOPS: &str = "moat_dns_sockops";
pub const MSG: &str = "moat_dns_msg";

/// Loads and attaches both programs; the sock_ops link is pinned under `links` and older
/// links of it are detached.
pub fn attach(ebpf: &mut Ebpf, cgroup_root: &Path, links: &Path) -> Result<Attached, KernelError> {
    let msg_fail = |message: String| KernelError::Program { program: MSG, hook: Hook::SkMsg.name(), message };
    let map = ebpf.map(DNS_SOCKETS).ok_or_else(|| KernelError::map(DNS_SOCKETS, "missing from the object"))?;
    let sockets: SockHash<_, moat_common::dns::SocketKey> = SockHash::try_from(map).map_err(|e| KernelError::map(DNS_SOCKETS, e))?;
    let map_fd = sockets.fd().try_clone().map_err(|e| KernelError::map(DNS_SOCKETS, e))?;
    let msg: &mut SkMsg = program(ebpf, MSG, Hook::SkMsg)?;
    msg.load().map_err(|e| msg_fail(format!("load: {}", chain(&e))))?;
    let id = msg.attach(&map_fd).map_err(|e| msg_fail(format!("attach to {DNS_SOCKETS}: {}", chain(&e))))?;
    // Kept attached past this process (see the module comment).
    std::mem::forget(msg.take_link(id).map_err(|e| msg_fail(format!("{e}")))?);

    let fail = |message: String| KernelError::Program { program: SOCKOPS, hook: Hook::SockOps.name(), message };
    let cgroup = File::open(cgroup_root).map_err(|source| KernelError::CgroupRoot { path: cgroup_root.into(), source })?;
    let program: &mut SockOps = program(ebpf, SOCKOPS, Hook::SockOps)?;
    program.load().map_err(|e| fail(format!("load: {}", chain(&e))))?;
    let id = program
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| fail(format!("attach to {}: {}", cgroup_root.display(), chain(&e))))?;
    let link: FdLink = program
        .take_link(id)
        .map_err(|e| fail(format!("{e}")))?
        .try_into()
        .map_err(|e| fail(format!("not a bpf_link: {e}")))?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let pin = links.join(format!("{SOCKOPS}@{stamp}"));
    link.pin(&pin).map_err(|e| KernelError::LinkPin { path: pin.clone(), message: e.to_string() })?;
    detach_links(links, SOCKOPS, Some(&pin))?;
    Ok(Attached { program: SOCKOPS, hook: Hook::SockOps, pin })
}

/// `name` in the object, as the program type its hook wants.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str, hook: Hook) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let fail = |message: String| KernelError::Program { program: name, hook: hook.name(), message };
    let found = ebpf.program_mut(name).ok_or_else(|| fail("missing from the object".into()))?;
    found.try_into().map_err(|e: ProgramError| fail(e.to_string()))
}
