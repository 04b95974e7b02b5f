//! A flow's two ends: the flow as a packet names it (`FlowId`), and its ends looked up in the
//! endpoint maps (`Ends`). Below the floor (which decides for `Ends`) and the flow table
//! (which is keyed by `FlowId`).

use core::mem::{offset_of, size_of, MaybeUninit};

use aya_ebpf::maps::lpm_trie::Key;
use moat_common::{
    maps::{FlowKey, Settings, NOT_ISOLATED, ORIGIN_OUTBOUND, SETTING_CLUSTER_POLICIES},
    verdict::{Peer, PeerClass},
};

use crate::maps::{LOCAL_ENDPOINTS, REMOTE_ENDPOINTS, REMOTE_NETWORKS};
use crate::packet::Addr;
use crate::verdicts;

/// A flow as its local end sees it, before any endpoint lookup.
pub struct FlowId {
    pub cgroup: u64,
    pub remote_addr: Addr,
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
}

impl FlowId {
    /// The flow-table key, written as words: a `[u8; 16]` field copy is sixteen byte moves,
    /// and zeroing the 3-byte pad is a call to `memset`.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        const _: () = assert!(offset_of!(FlowKey, remote_addr) == 8 && offset_of!(FlowKey, protocol) == 28);
        const _: () = assert!(size_of::<FlowKey>() == 32);
        let mut key = MaybeUninit::<FlowKey>::uninit();
        let base = key.as_mut_ptr() as *mut u8;
        // SAFETY: every write is in bounds and aligned (the struct is 8-aligned, the address
        // at 8, the ports at 24 and 26, protocol and pad at 28..32), and together they
        // initialise all 32 bytes.
        unsafe {
            *(base as *mut u64) = self.cgroup;
            *(base.add(8) as *mut Addr) = self.remote_addr;
            *(base.add(offset_of!(FlowKey, local_port)) as *mut u16) = self.local_port;
            *(base.add(offset_of!(FlowKey, remote_port)) as *mut u16) = self.remote_port;
            *(base.add(28) as *mut u32) = u32::from_ne_bytes([self.protocol, 0, 0, 0]);
            key.assume_init()
        }
    }

    /// What the verdict of this flow opened by `origin` depends on.
    #[inline(always)]
    pub fn verdict_inputs(&self, origin: u8) -> verdicts::Inputs<'_> {
        let port = if origin == ORIGIN_OUTBOUND {
            self.remote_port
        } else {
            self.local_port
        };
        verdicts::Inputs {
            cgroup: self.cgroup,
            remote: &self.remote_addr,
            protocol: self.protocol,
            port,
            origin,
        }
    }

    /// Both ends, looked up in the endpoint maps. The remote address's range identity only
    /// matters to a NetworkPolicy of the local pod or to a ClusterNetworkPolicy, so a pod no
    /// policy isolates skips that lookup for a remote pod on a node without the latter.
    #[inline(always)]
    pub fn ends(&self, settings: &Settings) -> Ends {
        let local = local_peer(self.cgroup);
        let isolated = local.endpoint.ingress_policy != NOT_ISOLATED
            || local.endpoint.egress_policy != NOT_ISOLATED
            || cluster_policies(settings);
        Ends {
            cgroup: self.cgroup,
            local,
            remote_addr: self.remote_addr,
            remote: remote_peer(&self.remote_addr, isolated),
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
        }
    }
}

/// One end of a flow, local (by cgroup) and remote (by address), plus its ports.
pub struct Ends {
    pub cgroup: u64,
    pub local: Peer,
    pub remote_addr: Addr,
    pub remote: Peer,
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
}

impl Ends {
    #[inline(always)]
    pub fn local_tenant(&self) -> u64 {
        self.local.tenant()
    }

    #[inline(always)]
    pub fn flow(&self) -> FlowId {
        FlowId {
            cgroup: self.cgroup,
            remote_addr: self.remote_addr,
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
        }
    }
}

/// A pod's traffic to itself, by its addresses: a loopback address at either end, or one
/// address at both (a pod reaching its own address, which the kernel routes over loopback).
/// `local_addr` is `Addr::ZERO` where the hook does not know it. Only where the hook also
/// knows the traffic stays in the pod's network namespace — a packet on the loopback device,
/// or a connect/sendmsg whose packets are checked again on their device — since a raw socket
/// can put any source on a packet it sends out of eth0.
#[inline(always)]
pub fn addresses_within_pod(local_addr: &Addr, remote_addr: &Addr) -> bool {
    remote_addr.is_loopback() || local_addr.is_loopback() || (*local_addr != Addr::ZERO && local_addr == remote_addr)
}

/// Whether a local pod's loopback is its own: a pod the agent knows, not hostNetwork (its
/// loopback and address are the node's, shared with host services and every other
/// hostNetwork pod) and not foreign (`node.foreign-tenant` denies everything).
#[inline(always)]
pub fn owns_its_loopback(local: &Peer) -> bool {
    matches!(local.class, PeerClass::Known) && !local.endpoint.is_host_network() && !local.endpoint.is_foreign()
}

/// Whether some ClusterNetworkPolicy selects a pod of this node (`CNP_SUBJECTS` is read).
#[inline(always)]
pub fn cluster_policies(settings: &Settings) -> bool {
    settings.flags & SETTING_CLUSTER_POLICIES != 0
}

#[inline(always)]
pub fn local_peer(cgroup: u64) -> Peer {
    // SAFETY: the value is copied out at once.
    match unsafe { LOCAL_ENDPOINTS.get(&cgroup) } {
        Some(endpoint) => Peer::known(*endpoint),
        None => Peer::PENDING,
    }
}

/// The remote end by address. `with_range`: also look up the address range, whose identity
/// ipBlock rules match on; without it, a pod found by its exact address is classified by that
/// entry alone, which is all the tenant floor reads (the range lookup is the trie walk).
#[inline(always)]
pub fn remote_peer(addr: &Addr, with_range: bool) -> Peer {
    // SAFETY: as above.
    let exact = unsafe { REMOTE_ENDPOINTS.get(addr.bytes()) };
    if exact.is_some() && !with_range {
        return Peer::remote_of(exact, None);
    }
    let range = REMOTE_NETWORKS.get(Key::new(128, addr.0));
    Peer::remote_of(exact, range)
}
