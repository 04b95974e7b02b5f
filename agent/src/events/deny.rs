//! A deny event, named: both ends' tenant, namespace and pod, addresses, ports, the rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use moat_common::event::{FlowEvent, HOOK_CONNECT, HOOK_SENDMSG};
use moat_common::maps::DIRECTION_INGRESS;
use moat_common::verdict::Reason;
use serde::Serialize;

use crate::compiler::Index;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct End {
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DenyRecord {
    pub verdict: &'static str,
    /// `ingress` or `egress`, seen from the local pod.
    pub direction: &'static str,
    /// `packet`, `connect` or `sendmsg`: where the kernel stopped it.
    pub hook: &'static str,
    pub protocol: String,
    /// The rule that decided, e.g. `tenant-floor`.
    pub rule: &'static str,
    /// For a NetworkPolicy deny: the policies isolating the local pod (`namespace/name`); for
    /// a ClusterNetworkPolicy verdict, the deciding rule (tier, policy, priority, rule, action).
    pub policies: Vec<String>,
    pub src: End,
    pub dst: End,
}

pub fn protocol_name(number: u8) -> String {
    match number {
        moat_common::IPPROTO_TCP => "TCP".into(),
        moat_common::IPPROTO_UDP => "UDP".into(),
        moat_common::IPPROTO_SCTP => "SCTP".into(),
        moat_common::IPPROTO_ICMP => "ICMP".into(),
        moat_common::IPPROTO_ICMPV6 => "ICMPv6".into(),
        other => other.to_string(),
    }
}

/// The 16-byte map form back to an address; IPv4-mapped addresses print as IPv4.
pub fn unmap(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl DenyRecord {
    pub fn from_event(event: &FlowEvent, index: &Index) -> Self {
        let tenant_name = |id: u64| (id != 0).then(|| index.tenants.get(&id).map(|t| t.to_string()).unwrap_or_else(|| format!("{id:#x}")));
        let local_pod = index.pods_by_cgroup.get(&event.cgroup);
        let local_ip = (event.local_addr != [0; 16]).then(|| unmap(event.local_addr));
        let local = End {
            tenant: tenant_name(event.local_tenant),
            namespace: local_pod.map(|p| p.namespace.to_string()),
            pod: local_pod.map(|p| p.name.to_string()),
            ip: local_ip.filter(|ip| *ip != IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port: event.local_port,
        };
        let remote_ip = unmap(event.remote_addr);
        let remote_pod = index.pods_by_ip.get(&remote_ip);
        let remote = End {
            tenant: tenant_name(event.remote_tenant),
            namespace: remote_pod.map(|p| p.namespace.to_string()),
            pod: remote_pod.map(|p| p.name.to_string()),
            ip: Some(remote_ip),
            port: event.remote_port,
        };
        let ingress = event.direction == DIRECTION_INGRESS;
        let (src, dst) = if ingress { (remote, local) } else { (local, remote) };
        let reason = Reason::from_u8(event.reason);
        Self {
            verdict: if reason.is_some_and(Reason::is_allow) { "allow" } else { "deny" },
            direction: if ingress { "ingress" } else { "egress" },
            hook: match event.hook {
                HOOK_CONNECT => "connect",
                HOOK_SENDMSG => "sendmsg",
                _ => "packet",
            },
            protocol: protocol_name(event.protocol),
            rule: reason.map(Reason::name).unwrap_or("unknown"),
            policies: match index.cluster_sets.get(&event.policy_set) {
                Some(tier_set) if reason.is_some_and(Reason::is_cluster_tier) => tier_set
                    .rules
                    .get(event.rule_position as usize)
                    .map(|rule| vec![rule.to_string()])
                    .unwrap_or_default(),
                _ => index
                    .policy_sets
                    .get(&event.policy_set)
                    .map(|set| set.policies.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            },
            src,
            dst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodKey, TenantName};
    use moat_common::maps::{ipv4_mapped, DIRECTION_EGRESS};

    #[test]
    fn names_both_ends_and_the_rule() {
        let mut index = Index::default();
        let alpha = TenantName::Label("alpha".into());
        let beta = TenantName::Label("beta".into());
        index.tenants.insert(alpha.id().0, alpha.clone());
        index.tenants.insert(beta.id().0, beta.clone());
        index.pods_by_cgroup.insert(7, PodKey::new("a", "web"));
        index.pods_by_ip.insert("10.0.0.2".parse().unwrap(), PodKey::new("b", "db"));
        let event = FlowEvent {
            hook: 1,
            direction: DIRECTION_EGRESS,
            reason: Reason::CrossTenant as u8,
            protocol: 6,
            cgroup: 7,
            local_tenant: alpha.id().0,
            remote_tenant: beta.id().0,
            local_addr: ipv4_mapped([10, 0, 0, 1]),
            remote_addr: ipv4_mapped([10, 0, 0, 2]),
            local_port: 40000,
            remote_port: 80,
            ..FlowEvent::default()
        };
        let record = DenyRecord::from_event(&event, &index);
        assert_eq!(record.rule, "tenant-floor");
        assert_eq!(record.src.pod.as_deref(), Some("web"));
        assert_eq!(record.src.tenant.as_deref(), Some("alpha"));
        assert_eq!(record.dst.namespace.as_deref(), Some("b"));
        assert_eq!(record.dst.tenant.as_deref(), Some("beta"));
        assert_eq!(record.dst.ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(record.dst.port, 80);
        assert_eq!(record.protocol, "TCP");
    }
}
