//! The flow table: one lookup for an established packet, generation-based revocation.

use moat_common::{
    maps::{FlowKey, FlowState, Settings},
    verdict::Reason,
};

use crate::ends::Ends;
use crate::maps::FLOWS;
use crate::verdicts;

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
        local_tenant,
        origin,
        reason: reason as u8,
        _pad: [0; 6],
    };
    let _ = FLOWS.insert(key, &state, 0);
}
