//! The flow table: one lookup for an established packet, generation-based revocation.

use core::mem::{offset_of, size_of, MaybeUninit};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use moat_common::{
    maps::{FlowKey, FlowState, Settings, NOT_ISOLATED, ORIGIN_OUTBOUND},
    verdict::Reason,
};

use crate::floor::{self, Ends};
use crate::maps::FLOWS;
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
        let local = floor::local_peer(self.cgroup);
        let isolated = local.endpoint.ingress_policy != NOT_ISOLATED
            || local.endpoint.egress_policy != NOT_ISOLATED
            || floor::cluster_policies(settings);
        Ends {
            cgroup: self.cgroup,
            local,
            remote_addr: self.remote_addr,
            remote: floor::remote_peer(&self.remote_addr, isolated),
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
        }
    }
}

/// What the flow table holds for a packet's flow.
pub enum Tracked {
    /// Admitted under the current generation: the local tenant, for the counters.
    Current(u64),
    /// Admitted under an older generation: to be re-decided (`redecide`) before use.
    Stale(*mut FlowState),
    Missing,
}

/// The one lookup an established packet makes. `generation` is `Settings::generation` as
/// read once at the start of the program run: everything the run decides is recorded under
/// the generation it was decided under, so a change armed mid-run still re-decides it.
#[inline(always)]
pub fn lookup(key: &FlowKey, generation: u64) -> Tracked {
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        return Tracked::Missing;
    };
    // SAFETY: the pointer comes from a successful lookup; the entry stays readable for the
    // rest of this program run (RCU).
    if unsafe { (*state).generation } == generation {
        Tracked::Current(unsafe { (*state).local_tenant })
    } else {
        Tracked::Stale(state)
    }
}

/// The side that opened a stale flow.
#[inline(always)]
pub fn origin_of(state: *mut FlowState) -> u8 {
    // SAFETY: from `lookup` in this program run.
    unsafe { (*state).origin }
}

/// Marks a stale flow admitted under the current generation.
#[inline(always)]
pub fn renew(state: *mut FlowState, generation: u64, reason: Reason, local_tenant: u64) {
    // SAFETY: from `lookup` in this program run, with no FLOWS operation since.
    let state = unsafe { &mut *state };
    state.generation = generation;
    state.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    state.reason = reason as u8;
    state.local_tenant = local_tenant;
}

/// Re-decides a flow admitted under an older generation in its original direction, and
/// either renews it or removes it, so a revoked flow is cut on its next packet.
#[inline(always)]
pub fn redecide(state: *mut FlowState, key: &FlowKey, ends: &Ends, settings: &Settings, generation: u64) -> Reason {
    let origin = origin_of(state);
    let reason = ends.decide(settings, origin);
    if reason.is_allow() {
        verdicts::put(
            &ends.flow().verdict_inputs(origin),
            generation,
            reason,
            ends.local_tenant(),
        );
        renew(state, generation, reason, ends.local_tenant());
    } else {
        let _ = FLOWS.remove(key);
    }
    reason
}

pub enum FlowLookup {
    /// Admitted under the current generation.
    Current,
    /// Admitted earlier; re-decided in its original direction (allowed or cut).
    Redecided(Reason),
    Missing,
}

/// `lookup`, then `redecide` for a stale entry.
#[inline(always)]
pub fn check_flow(key: &FlowKey, ends: &Ends, settings: &Settings) -> FlowLookup {
    let generation = settings.generation;
    match lookup(key, generation) {
        Tracked::Current(_) => FlowLookup::Current,
        Tracked::Stale(state) => FlowLookup::Redecided(redecide(state, key, ends, settings, generation)),
        Tracked::Missing => FlowLookup::Missing,
    }
}

#[inline(always)]
pub fn track(key: &FlowKey, generation: u64, origin: u8, reason: Reason, local_tenant: u64) {
    let state = FlowState {
        generation,
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        local_tenant,
        origin,
        reason: reason as u8,
        _pad: [0; 6],
    };
    let _ = FLOWS.insert(key, &state, 0);
}
