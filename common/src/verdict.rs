//! The tenant-floor decision. Compiled into the eBPF programs and into the agent, so what
//! `moat explain` reports is, by construction, what the kernel does.

use crate::maps::{Endpoint, Settings, SharedPortKey, TenantPairKey, UNKNOWN_ALLOW};

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
    CrossTenant = 64,
    Pending = 65,
    UnknownDenied = 66,
}

impl Reason {
    pub const fn is_allow(self) -> bool {
        (self as u8) < 64
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::SameTenant,
            2 => Self::SharedService,
            3 => Self::TenantPair,
            4 => Self::UnknownAllowed,
            5 => Self::NotReady,
            6 => Self::NeighborDiscovery,
            7 => Self::Established,
            64 => Self::CrossTenant,
            65 => Self::Pending,
            66 => Self::UnknownDenied,
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
            Self::CrossTenant => "tenant-floor",
            Self::Pending => "pending-endpoint",
            Self::UnknownDenied => "unknown-endpoint-denied",
        }
    }
}

/// One end of a flow after the map lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A pod (or declared network) with a known tenant.
    Known(Endpoint),
    /// Belongs to the pods but cannot be attributed yet: may talk to nothing cross-tenant.
    Pending,
    /// Not a pod at all (the host, the outside world).
    Unknown,
}

impl Peer {
    /// Classifies the result of a remote lookup (`None`: the address matched nothing).
    pub const fn remote(found: Option<Endpoint>) -> Self {
        match found {
            Some(endpoint) if endpoint.is_pending() => Self::Pending,
            Some(endpoint) => Self::Known(endpoint),
            None => Self::Unknown,
        }
    }

    /// Classifies the result of a local (cgroup) lookup: every cgroup below the pods' root is
    /// a pod, so one the agent has not mapped yet is pending, never unknown.
    pub const fn local(found: Option<Endpoint>) -> Self {
        match found {
            Some(endpoint) if !endpoint.is_pending() => Self::Known(endpoint),
            _ => Self::Pending,
        }
    }
}

/// The exception tables, looked up in kernel maps or in their userspace mirror.
pub trait Exceptions {
    fn shared_port(&self, key: &SharedPortKey) -> bool;
    fn tenant_pair(&self, key: &TenantPairKey) -> bool;
}

/// The tenant floor for a flow from `src` to `dst` on `dst_port`.
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
    if matches!(src, Peer::Unknown) || matches!(dst, Peer::Unknown) {
        return if settings.unknown == UNKNOWN_ALLOW {
            Reason::UnknownAllowed
        } else {
            Reason::UnknownDenied
        };
    }
    if let (Peer::Known(s), Peer::Known(d)) = (src, dst) {
        if s.tenant == d.tenant {
            return Reason::SameTenant;
        }
    }
    if let Peer::Known(d) = dst {
        if d.shared != 0 && shared_port_open(exceptions, d.shared, protocol, dst_port) {
            return Reason::SharedService;
        }
    }
    match (src, dst) {
        (Peer::Known(s), Peer::Known(d)) => {
            if exceptions.tenant_pair(&TenantPairKey { src: s.tenant, dst: d.tenant }) {
                Reason::TenantPair
            } else {
                Reason::CrossTenant
            }
        }
        _ => Reason::Pending,
    }
}

fn shared_port_open<E: Exceptions>(exceptions: &E, shared: u32, protocol: u8, port: u16) -> bool {
    exceptions.shared_port(&SharedPortKey { shared, port, protocol, _pad: 0 })
        || exceptions.shared_port(&SharedPortKey { shared, port: 0, protocol: 0, _pad: 0 })
}
