//! `moat explain` for ClusterNetworkPolicies: which rule of the local pod's tier set decided
//! (or passed) the flow, read from the same compiled entries the kernel looks up
//! (`CNP_RULES`), named down to tier, policy, priority, rule and action.

use moat_common::maps::{TierMatch, NOT_ISOLATED, TIER_PASS};
use moat_common::verdict::{first_cluster_rules, Peer, Reason};

use crate::compiler::Desired;

/// What the tiers of `tier_set` did for `peer` on `(protocol, port)`, given the verdict
/// `decision`: the deciding rule (after any Admin `Pass`), or the `Pass` that handed the flow
/// on; None when no rule of the set matches or the pod has none.
pub fn describe(desired: &Desired, tier_set: u64, peer: &Peer, (protocol, port): (u8, u16), decision: Reason) -> Option<String> {
    if tier_set == NOT_ISOLATED {
        return None;
    }
    let tiers = first_cluster_rules(tier_set, peer, protocol, port, desired);
    let rules = &desired.index.cluster_sets.get(&tier_set)?.rules;
    let rule = |encoded: u32| rules.get(TierMatch::position(encoded) as usize).map(ToString::to_string).unwrap_or_else(|| "?".into());
    let passed = (TierMatch::action(tiers.admin) == TIER_PASS).then(|| rule(tiers.admin));
    let verdict = if decision.is_allow() { "accept" } else { "deny" };
    match decision {
        Reason::AdminAccepted | Reason::AdminDenied => Some(format!("{verdict} by {}", rule(tiers.admin))),
        Reason::BaselineAccepted | Reason::BaselineDenied => {
            let after = passed.map(|pass| format!(" (after {pass})")).unwrap_or_default();
            Some(format!("{verdict} by {}{after}", rule(tiers.baseline)))
        }
        _ => passed.map(|pass| format!("{pass} hands it to the NetworkPolicy tier")),
    }
}
