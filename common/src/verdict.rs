//! The tenant-floor decision. Compiled into the eBPF programs and into the agent, so what
//! `moat explain` reports is, by construction, what the kernel does. Everything is
//! `#[inline(always)]`: BPF calls take at most five arguments, passed in registers.

use crate::maps::{
    Endpoint, PolicyMatch, Settings, SharedPortKey, TenantPairKey, TierMatch, IDENTITY_ANY,
    NOT_ISOLATED, SETTING_DEFAULT_DENY_IN_TENANT, TIER_ACCEPT, TIER_DENY, UNKNOWN_ALLOW,
};

/// Why a flow was allowed or denied. Values below 64 allow, 64 and above deny.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    SameTenant = 1,
    SharedService = 2,
    TenantPair = 3,
    UnknownAllowed = 4,
    /// No agent has completed a sync yet: enforcement is not armed.
    NotReady = 5,
    /// IPv6 neighbour discovery, without which no IPv6 traffic flows at all.
    NeighborDiscovery = 6,
    /// Part of a flow admitted under the current generation.
    Established = 7,
    /// The tenant floor allowed it and a NetworkPolicy of the local pod allows it.
    PolicyAllowed = 8,
    /// `dns.isolation: detect`: a question `DnsCrossTenant` would refuse, let through.
    DnsCrossTenantDetected = 9,
    /// `dns.isolation: detect`: a question `DnsMalformed` would refuse, let through.
    DnsMalformedDetected = 10,
    /// An Admin-tier ClusterNetworkPolicy rule accepts it (NetworkPolicy is not consulted).
    AdminAccepted = 11,
    /// A Baseline-tier ClusterNetworkPolicy rule accepts it (no NetworkPolicy isolates the pod).
    BaselineAccepted = 12,
    /// Both ends are the same pod: its loopback, or its own address. Such traffic never leaves
    /// the pod's network namespace, and no NetworkPolicy or tenant rule applies to it.
    SamePod = 13,
    CrossTenant = 64,
    Pending = 65,
    UnknownDenied = 66,
    /// The destination pod is isolated for ingress and no policy allows this peer and port.
    PolicyIngressDenied = 67,
    /// The source pod is isolated for egress and no policy allows this peer and port.
    PolicyEgressDenied = 68,
    /// Same tenant, no policy selects the pod, and the config denies by default in tenants.
    TenantDefaultDeny = 69,
    /// One end is a pod of another tenant on a node reserved for one tenant.
    ForeignTenant = 70,
    /// A DNS question about another tenant's namespace, or a wildcard (see `dns`).
    DnsCrossTenant = 71,
    /// A DNS question whose name no resolver sends (see `dns::Question::Malformed`).
    DnsMalformed = 72,
    /// An Admin-tier ClusterNetworkPolicy rule denies it, whatever NetworkPolicy says.
    AdminDenied = 73,
    /// A Baseline-tier ClusterNetworkPolicy rule denies it (no NetworkPolicy isolates the pod).
    BaselineDenied = 74,
}

impl Reason {
    pub const fn is_allow(self) -> bool {
        (self as u8) < 64
    }

    /// Whether a ClusterNetworkPolicy tier decided (rather than NetworkPolicy, the in-tenant
    /// default or the floor).
    pub const fn is_cluster_tier(self) -> bool {
        matches!(self, Self::AdminAccepted | Self::AdminDenied | Self::BaselineAccepted | Self::BaselineDenied)
    }

    // Inline in the programs: a BPF call costs 6.1's verifier its pruning (ebpf floor.rs, `RuleKey`).
    #[inline(always)]
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::SameTenant,
            2 => Self::SharedService,
            3 => Self::TenantPair,
            4 => Self::UnknownAllowed,
            5 => Self::NotReady,
            6 => Self::NeighborDiscovery,
            7 => Self::Established,
            8 => Self::PolicyAllowed,
            9 => Self::DnsCrossTenantDetected,
            10 => Self::DnsMalformedDetected,
            11 => Self::AdminAccepted,
            12 => Self::BaselineAccepted,
            13 => Self::SamePod,
            64 => Self::CrossTenant,
            65 => Self::Pending,
            66 => Self::UnknownDenied,
            67 => Self::PolicyIngressDenied,
            68 => Self::PolicyEgressDenied,
            69 => Self::TenantDefaultDeny,
            70 => Self::ForeignTenant,
            71 => Self::DnsCrossTenant,
            72 => Self::DnsMalformed,
            73 => Self::AdminDenied,
            74 => Self::BaselineDenied,
            _ => return None,
        })
    }

    /// Stable name used in events, metrics and explain output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SameTenant => "same-tenant",
            Self::SharedService => "shared-service",
            Self::TenantPair => "tenant-pair",
            Self::UnknownAllowed => "unknown-endpoint-allowed",
            Self::NotReady => "not-ready",
            Self::NeighborDiscovery => "neighbor-discovery",
            Self::Established => "established",
            Self::PolicyAllowed => "network-policy",
            Self::CrossTenant => "tenant-floor",
            Self::Pending => "pending-endpoint",
            Self::UnknownDenied => "unknown-endpoint-denied",
            Self::PolicyIngressDenied => "network-policy-ingress",
            Self::PolicyEgressDenied => "network-policy-egress",
            Self::TenantDefaultDeny => "tenant-default-deny",
            Self::ForeignTenant => "node.foreign-tenant",
            Self::DnsCrossTenant | Self::DnsCrossTenantDetected => "dns.cross-tenant",
            Self::DnsMalformed | Self::DnsMalformedDetected => "dns.malformed",
            Self::AdminAccepted | Self::AdminDenied => "cluster-network-policy.admin",
            Self::BaselineAccepted | Self::BaselineDenied => "cluster-network-policy.baseline",
            Self::SamePod => "same-pod",
        }
    }
}

/// What is known about one end of a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerClass {
    /// A pod (or declared network) with a known tenant.
    Known = 1,
    /// Belongs to the pods but cannot be attributed yet: may talk to nothing cross-tenant.
    Pending = 2,
    /// Not a pod at all (the host, the outside world).
    Unknown = 3,
}

/// One end of a flow after the map lookups. A plain struct rather than an enum with a
/// payload: the verifier rejects code that carries the uninitialised payload of an empty
/// variant around, so the endpoint is always a real (zeroed when absent) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub class: PeerClass,
    pub endpoint: Endpoint,
    /// Identity of the most specific policy address range holding the peer's address, 0 if
    /// none: ipBlock peers match on it, pods included.
    pub cidr_identity: u64,
}

impl Peer {
    pub const PENDING: Self =
        Self { class: PeerClass::Pending, endpoint: Endpoint::EMPTY, cidr_identity: 0 };
    pub const UNKNOWN: Self =
        Self { class: PeerClass::Unknown, endpoint: Endpoint::EMPTY, cidr_identity: 0 };

    pub const fn known(endpoint: Endpoint) -> Self {
        if endpoint.is_pending() {
            Self::PENDING
        } else if endpoint.is_external() {
            Self { class: PeerClass::Unknown, endpoint: Endpoint::EMPTY, cidr_identity: endpoint.identity }
        } else {
            Self { class: PeerClass::Known, endpoint, cidr_identity: 0 }
        }
    }

    /// A remote address: the exact (pod) lookup if any, else the range lookup; the range's
    /// identity is kept either way for ipBlock matching. Takes references: an
    /// `Option<Endpoint>` by value carries an uninitialised payload the verifier rejects.
    #[inline(always)]
    pub fn remote_of(exact: Option<&Endpoint>, range: Option<&Endpoint>) -> Self {
        let mut peer = match (exact, range) {
            (Some(endpoint), _) => Self::known(*endpoint),
            (None, Some(endpoint)) => Self::known(*endpoint),
            (None, None) => Self::UNKNOWN,
        };
        if let Some(endpoint) = range {
            peer.cidr_identity = endpoint.identity;
        }
        peer
    }

    /// Classifies the result of a remote lookup (`None`: the address matched nothing).
    pub const fn remote(found: Option<Endpoint>) -> Self {
        match found {
            Some(endpoint) => Self::known(endpoint),
            None => Self::UNKNOWN,
        }
    }

    /// Classifies the result of a local (cgroup) lookup: every cgroup below the pods' root is
    /// a pod, so one the agent has not mapped yet is pending, never unknown.
    pub const fn local(found: Option<Endpoint>) -> Self {
        match found {
            Some(endpoint) => Self::known(endpoint),
            None => Self::PENDING,
        }
    }

    /// The tenant id, 0 unless known.
    pub const fn tenant(&self) -> u64 {
        self.endpoint.tenant
    }
}

/// The exception tables, looked up in kernel maps or in their userspace mirror.
pub trait Exceptions {
    fn shared_port(&self, key: &SharedPortKey) -> bool;
    fn tenant_pair(&self, key: &TenantPairKey) -> bool;
}

/// The tenant floor for a flow from `src` to `dst` on `dst_port`.
#[inline(always)]
pub fn decide<E: Exceptions>(
    settings: &Settings,
    src: Peer,
    dst: Peer,
    protocol: u8,
    dst_port: u16,
    exceptions: &E,
) -> Reason {
    if settings.ready == 0 {
        return Reason::NotReady;
    }
    // First: a foreign pod talks to nothing, not even hosts or the outside world.
    if src.endpoint.is_foreign() || dst.endpoint.is_foreign() {
        return Reason::ForeignTenant;
    }
    if matches!(src.class, PeerClass::Unknown) || matches!(dst.class, PeerClass::Unknown) {
        return if settings.unknown == UNKNOWN_ALLOW {
            Reason::UnknownAllowed
        } else {
            Reason::UnknownDenied
        };
    }
    let both_known = matches!(src.class, PeerClass::Known) && matches!(dst.class, PeerClass::Known);
    if both_known && src.endpoint.tenant == dst.endpoint.tenant {
        return Reason::SameTenant;
    }
    let shared = dst.endpoint.shared;
    if matches!(dst.class, PeerClass::Known)
        && shared != 0
        && shared_port_open(exceptions, shared, protocol, dst_port)
    {
        return Reason::SharedService;
    }
    if !both_known {
        return Reason::Pending;
    }
    let pair = TenantPairKey { src: src.endpoint.tenant, dst: dst.endpoint.tenant };
    if exceptions.tenant_pair(&pair) {
        Reason::TenantPair
    } else {
        Reason::CrossTenant
    }
}

/// The compiled NetworkPolicy rules, looked up by longest prefix like the kernel's LPM trie.
pub trait PolicyRules {
    /// Whether any entry's prefix covers `key` (a full-length key).
    fn covers(&self, key: &PolicyMatch) -> bool;
}

/// Whether policy set `set` lets `peer` in (or out) on `protocol`/`port`.
#[inline(always)]
pub fn policy_allows<R: PolicyRules>(set: u64, peer: &Peer, protocol: u8, port: u16, rules: &R) -> bool {
    let identity = peer.endpoint.identity;
    (identity != 0 && rules.covers(&PolicyMatch::new(set, identity, protocol, port)))
        || (peer.cidr_identity != 0
            && rules.covers(&PolicyMatch::new(set, peer.cidr_identity, protocol, port)))
        || rules.covers(&PolicyMatch::new(set, IDENTITY_ANY, protocol, port))
}

/// The compiled ClusterNetworkPolicy entries, looked up by longest prefix like `CNP_RULES`.
pub trait ClusterRules {
    /// The value of the longest entry covering `key` (a full-length key), `TierMatch::NONE`
    /// if none does.
    fn first_rules(&self, key: &PolicyMatch) -> TierMatch;

    /// `first_cluster_rules` over these entries; the programs override it with one that
    /// rewrites a single key written as words (their stack has little room to spare).
    #[inline(always)]
    fn first_for_peer(&self, set: u64, peer: &Peer, protocol: u8, port: u16) -> TierMatch
    where
        Self: Sized,
    {
        first_cluster_rules(set, peer, protocol, port, self)
    }
}

/// Per tier, the first rule of tier set `set` that matches `peer` on `protocol`/`port`: each
/// entry already holds the first rule over every port prefix it lies in, so the answer is the
/// first of the peer's three identities (pod, address range, any peer).
#[inline(always)]
pub fn first_cluster_rules<R: ClusterRules>(set: u64, peer: &Peer, protocol: u8, port: u16, rules: &R) -> TierMatch {
    // One key, its identity rewritten: the programs' stack has little room to spare.
    let mut key = PolicyMatch::new(set, IDENTITY_ANY, protocol, port);
    let mut found = rules.first_rules(&key);
    if peer.endpoint.identity != 0 {
        key.identity = peer.endpoint.identity;
        found = found.first(rules.first_rules(&key));
    }
    if peer.cidr_identity != 0 {
        key.identity = peer.cidr_identity;
        found = found.first(rules.first_rules(&key));
    }
    found
}

/// Which end of the flow this node enforces for: NetworkPolicy is applied by the node of the
/// pod it selects (egress at the source's node, ingress at the destination's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalEnd {
    Source,
    Destination,
}

/// The complete verdict for a new flow from `src` to `dst`, enforced for `local`'s end:
/// (1) the tenant floor, (2) the Admin tier of ClusterNetworkPolicy, (3) NetworkPolicy of
/// the local pod, (4) the Baseline tier, (5) the in-tenant default. `cluster_set` is the
/// local pod's tier set for this direction (`NOT_ISOLATED`: no ClusterNetworkPolicy selects
/// it, or none exists). The floor stays first: no ClusterNetworkPolicy opens a path between
/// tenants.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn decide_flow<T: Exceptions + PolicyRules + ClusterRules>(
    settings: &Settings,
    src: Peer,
    dst: Peer,
    protocol: u8,
    dst_port: u16,
    local: LocalEnd,
    cluster_set: u64,
    tables: &T,
) -> Reason {
    let floor = decide(settings, src, dst, protocol, dst_port, tables);
    if !floor.is_allow() || matches!(floor, Reason::NotReady) {
        return floor;
    }
    let (set, peer, denied) = match local {
        LocalEnd::Source => (src.endpoint.egress_policy, dst, Reason::PolicyEgressDenied),
        LocalEnd::Destination => (dst.endpoint.ingress_policy, src, Reason::PolicyIngressDenied),
    };
    let tiers = if cluster_set != NOT_ISOLATED {
        tables.first_for_peer(cluster_set, &peer, protocol, dst_port)
    } else {
        TierMatch::NONE
    };
    // A Pass (or no rule) goes on to the next tier.
    match TierMatch::action(tiers.admin) {
        TIER_ACCEPT => return Reason::AdminAccepted,
        TIER_DENY => return Reason::AdminDenied,
        _ => {}
    }
    if set != NOT_ISOLATED {
        return if policy_allows(set, &peer, protocol, dst_port, tables) {
            Reason::PolicyAllowed
        } else {
            denied
        };
    }
    match TierMatch::action(tiers.baseline) {
        TIER_ACCEPT => return Reason::BaselineAccepted,
        TIER_DENY => return Reason::BaselineDenied,
        _ => {}
    }
    if matches!(floor, Reason::SameTenant) && settings.flags & SETTING_DEFAULT_DENY_IN_TENANT != 0 {
        return Reason::TenantDefaultDeny;
    }
    floor
}

#[inline(always)]
fn shared_port_open<E: Exceptions>(exceptions: &E, shared: u32, protocol: u8, port: u16) -> bool {
    exceptions.shared_port(&SharedPortKey { shared, port, protocol, _pad: 0 })
        || exceptions.shared_port(&SharedPortKey { shared, port: 0, protocol: 0, _pad: 0 })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;
    use crate::maps::{UNKNOWN_DENY, ENDPOINT_FOREIGN, ENDPOINT_PENDING};

    #[derive(Default)]
    struct Tables {
        shared: BTreeSet<(u32, u16, u8)>,
        pairs: BTreeSet<(u64, u64)>,
    }

    impl Exceptions for Tables {
        fn shared_port(&self, key: &SharedPortKey) -> bool {
            self.shared.contains(&(key.shared, key.port, key.protocol))
        }
        fn tenant_pair(&self, key: &TenantPairKey) -> bool {
            self.pairs.contains(&(key.src, key.dst))
        }
    }

    const READY: Settings = Settings { generation: 1, unknown: UNKNOWN_ALLOW, ready: 1, flags: 0, dns: 0 };

    fn pod(tenant: u64, shared: u32) -> Peer {
        Peer::known(Endpoint { tenant, shared, ..Endpoint::EMPTY })
    }

    #[test]
    fn floor_order() {
        let mut tables = Tables::default();
        tables.shared.insert((1, 53, 17));
        tables.pairs.insert((3, 4));
        let decide = |src, dst, port| decide(&READY, src, dst, 17, port, &tables);
        assert_eq!(decide(pod(1, 0), pod(1, 0), 80), Reason::SameTenant);
        assert_eq!(decide(pod(1, 0), pod(2, 0), 80), Reason::CrossTenant);
        assert_eq!(decide(pod(1, 0), pod(2, 1), 53), Reason::SharedService);
        assert_eq!(decide(pod(1, 0), pod(2, 1), 54), Reason::CrossTenant);
        assert_eq!(decide(pod(2, 1), pod(1, 0), 53), Reason::CrossTenant);
        assert_eq!(decide(pod(3, 0), pod(4, 0), 80), Reason::TenantPair);
        assert_eq!(decide(pod(4, 0), pod(3, 0), 80), Reason::CrossTenant);
        assert_eq!(decide(Peer::PENDING, pod(1, 0), 80), Reason::Pending);
        assert_eq!(decide(pod(1, 0), Peer::PENDING, 80), Reason::Pending);
        assert_eq!(decide(Peer::PENDING, pod(2, 1), 53), Reason::SharedService);
        assert_eq!(decide(pod(1, 0), Peer::UNKNOWN, 80), Reason::UnknownAllowed);
        let strict = Settings { unknown: UNKNOWN_DENY, ..READY };
        assert_eq!(super::decide(&strict, Peer::UNKNOWN, pod(1, 0), 17, 80, &tables), Reason::UnknownDenied);
        let unarmed = Settings { ready: 0, ..READY };
        assert_eq!(super::decide(&unarmed, pod(1, 0), pod(2, 0), 17, 80, &tables), Reason::NotReady);
    }

    #[test]
    fn a_foreign_end_is_denied_before_every_exception() {
        let mut tables = Tables::default();
        tables.shared.insert((1, 53, 17));
        tables.pairs.insert((1, 2));
        tables.pairs.insert((2, 1));
        let foreign = |tenant, shared| Peer::known(Endpoint { tenant, shared, flags: ENDPOINT_FOREIGN, ..Endpoint::EMPTY });
        let decide = |src, dst, port| decide(&READY, src, dst, 17, port, &tables);
        assert_eq!(decide(foreign(1, 0), pod(1, 0), 80), Reason::ForeignTenant, "same tenant");
        assert_eq!(decide(pod(1, 0), foreign(1, 0), 80), Reason::ForeignTenant, "same tenant, inbound");
        assert_eq!(decide(foreign(1, 0), pod(2, 0), 80), Reason::ForeignTenant, "allowed tenant pair");
        assert_eq!(decide(pod(2, 0), foreign(1, 1), 53), Reason::ForeignTenant, "to a shared service");
        assert_eq!(decide(foreign(1, 0), Peer::UNKNOWN, 80), Reason::ForeignTenant, "to the outside world");
        assert_eq!(decide(Peer::UNKNOWN, foreign(1, 0), 80), Reason::ForeignTenant, "from the outside world");
        assert_eq!(decide(pod(1, 0), pod(2, 0), 80), Reason::TenantPair, "the others are untouched");
        let unarmed = Settings { ready: 0, ..READY };
        assert_eq!(super::decide(&unarmed, foreign(1, 0), pod(1, 0), 17, 80, &tables), Reason::NotReady);
        assert!(!Reason::ForeignTenant.is_allow());
        assert_eq!(Reason::ForeignTenant.name(), "node.foreign-tenant");
    }

    #[test]
    fn all_ports_entry_opens_every_port() {
        let mut tables = Tables::default();
        tables.shared.insert((5, 0, 0));
        assert_eq!(decide(&READY, pod(1, 0), pod(2, 5), 6, 8443, &tables), Reason::SharedService);
    }

    #[test]
    fn pending_flag_makes_a_found_endpoint_pending() {
        let pending = Endpoint { flags: ENDPOINT_PENDING, ..Endpoint::EMPTY };
        assert_eq!(Peer::remote(Some(pending)), Peer::PENDING);
        assert_eq!(Peer::local(None), Peer::PENDING);
        assert_eq!(Peer::remote(None), Peer::UNKNOWN);
    }

    #[test]
    fn reasons_round_trip() {
        for value in 0..=255u8 {
            if let Some(reason) = Reason::from_u8(value) {
                assert_eq!(reason as u8, value);
                assert_eq!(reason.is_allow(), value < 64);
                // A ClusterNetworkPolicy tier is named as such in events.
                let name = reason.name();
                assert_eq!(reason.is_cluster_tier(), name.starts_with("cluster-network-policy."), "{name}");
            }
        }
    }

    /// Exact-key tables for the tier order (prefixes are the agent's compiler's business).
    #[derive(Default)]
    struct Tiers {
        policy: BTreeSet<(u64, u64)>,
        cluster: std::collections::BTreeMap<(u64, u64), TierMatch>,
    }

    impl Exceptions for Tiers {
        fn shared_port(&self, _: &SharedPortKey) -> bool {
            false
        }
        fn tenant_pair(&self, _: &TenantPairKey) -> bool {
            false
        }
    }

    impl PolicyRules for Tiers {
        fn covers(&self, key: &PolicyMatch) -> bool {
            self.policy.contains(&(key.set, key.identity))
        }
    }

    impl ClusterRules for Tiers {
        fn first_rules(&self, key: &PolicyMatch) -> TierMatch {
            self.cluster.get(&(key.set, key.identity)).copied().unwrap_or(TierMatch::NONE)
        }
    }

    #[test]
    fn cluster_tiers_sit_around_network_policy_below_the_floor() {
        use crate::maps::{TIER_NO_RULE, TIER_PASS};
        let rule = TierMatch::rule;
        let (cluster_set, np_set) = (7, 9);
        let local = |np| Peer::known(Endpoint { tenant: 1, identity: 100, ingress_policy: np, ..Endpoint::EMPTY });
        let remote = |tenant, identity| Peer::known(Endpoint { tenant, identity, ..Endpoint::EMPTY });
        let mut tables = Tiers::default();
        let verdict = |tables: &Tiers, src: Peer, dst: Peer, set| {
            decide_flow(&READY, src, dst, 6, 80, LocalEnd::Destination, set, tables)
        };
        // No tier set: NetworkPolicy and the floor as before.
        assert_eq!(verdict(&tables, remote(1, 5), local(0), 0), Reason::SameTenant);
        assert_eq!(verdict(&tables, remote(1, 5), local(np_set), 0), Reason::PolicyIngressDenied);
        // Admin Deny beats a NetworkPolicy allow; Admin Accept beats its deny.
        tables.policy.insert((np_set, 5));
        tables.cluster.insert((cluster_set, 5), TierMatch { admin: rule(0, TIER_DENY), baseline: TIER_NO_RULE });
        assert_eq!(verdict(&tables, remote(1, 5), local(np_set), cluster_set), Reason::AdminDenied);
        tables.policy.clear();
        tables.cluster.insert((cluster_set, 5), TierMatch { admin: rule(0, TIER_ACCEPT), baseline: TIER_NO_RULE });
        assert_eq!(verdict(&tables, remote(1, 5), local(np_set), cluster_set), Reason::AdminAccepted);
        // Pass goes to NetworkPolicy, then Baseline decides only where none isolates the pod.
        tables.cluster.insert((cluster_set, 5), TierMatch { admin: rule(0, TIER_PASS), baseline: rule(1, TIER_DENY) });
        assert_eq!(verdict(&tables, remote(1, 5), local(np_set), cluster_set), Reason::PolicyIngressDenied);
        assert_eq!(verdict(&tables, remote(1, 5), local(0), cluster_set), Reason::BaselineDenied);
        tables.cluster.insert((cluster_set, 5), TierMatch { admin: TIER_NO_RULE, baseline: rule(1, TIER_ACCEPT) });
        let strict = Settings { flags: SETTING_DEFAULT_DENY_IN_TENANT, ..READY };
        assert_eq!(
            decide_flow(&strict, remote(1, 5), local(0), 6, 80, LocalEnd::Destination, cluster_set, &tables),
            Reason::BaselineAccepted,
            "a Baseline Accept is decided before the in-tenant default"
        );
        // The earliest rule over the peer's identities wins: `any peer` Deny at 3 against the
        // pod's Accept at 2.
        tables.cluster.insert((cluster_set, IDENTITY_ANY), TierMatch { admin: rule(3, TIER_DENY), baseline: TIER_NO_RULE });
        tables.cluster.insert((cluster_set, 5), TierMatch { admin: rule(2, TIER_ACCEPT), baseline: TIER_NO_RULE });
        assert_eq!(verdict(&tables, remote(1, 5), local(0), cluster_set), Reason::AdminAccepted);
        tables.cluster.insert((cluster_set, IDENTITY_ANY), TierMatch { admin: rule(1, TIER_DENY), baseline: TIER_NO_RULE });
        assert_eq!(verdict(&tables, remote(1, 5), local(0), cluster_set), Reason::AdminDenied);
        // The floor stays first: an Admin Accept does not open another tenant.
        tables.cluster.insert((cluster_set, IDENTITY_ANY), TierMatch { admin: rule(0, TIER_ACCEPT), baseline: TIER_NO_RULE });
        assert_eq!(verdict(&tables, remote(2, 5), local(0), cluster_set), Reason::CrossTenant);
        assert!(Reason::AdminAccepted.is_allow() && Reason::BaselineAccepted.is_allow());
        assert!(!Reason::AdminDenied.is_allow() && !Reason::BaselineDenied.is_allow());
    }
}
