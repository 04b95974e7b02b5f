//! `moat explain --dns NAME --from NS/POD`: what the datapath does with a pod's DNS question,
//! decided by the kernel's own `moat_common::dns` over the compiled entries.

use moat_common::dns::{self, AddressOwner, DnsMaps, DnsNamespace, DnsScratch, DnsVerdict, DnsZone, NamespaceKey, Question};
use moat_common::maps::TenantPairKey;

use crate::compiler::Desired;
use crate::explain::{ExplainError, Explanation, Format};
use crate::model::PodKey;

impl DnsMaps for Desired {
    fn zone(&self, slot: u32) -> Option<&DnsZone> {
        self.dns_zones.get(&slot)
    }

    fn namespace(&self, key: &NamespaceKey) -> Option<DnsNamespace> {
        self.dns_namespaces.get(key).copied()
    }

    fn address(&self, addr: &[u8; 16]) -> Option<AddressOwner> {
        self.remote.get(addr).map(|endpoint| AddressOwner { tenant: endpoint.tenant, shared: endpoint.shared != 0 })
    }

    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        self.tenant_pairs.contains(key)
    }
}

/// The fate of the question `name` (any record type) asked by `from`.
pub fn explain_dns(desired: &Desired, from: &PodKey, name: &str) -> Result<Explanation, ExplainError> {
    let tenant = desired.index.pod_tenants.get(from).ok_or_else(|| ExplainError::UnknownPod(from.clone()))?;
    let mut scratch = DnsScratch::EMPTY;
    let len = dns::to_wire(name, &mut scratch.name).ok_or_else(|| ExplainError::NotADnsName(name.to_string()))?;
    let question = dns::classify(&mut scratch, len, desired);
    let verdict = dns::decide(question, tenant.id().0, desired);
    let tenant_name = |id: u64| desired.index.tenants.get(&id).map(ToString::to_string).unwrap_or_else(|| "?".into());
    let namespace = String::from_utf8_lossy(&scratch.key.name).trim_end_matches('\0').to_string();
    let mut reasons = vec![match question {
        Question::Outside => "not a name of a cluster zone's namespaces (dns.zones): passes untouched".to_string(),
        Question::UnknownNamespace => format!("namespace {namespace} is not in the model: the cluster DNS has nothing to answer; passes"),
        Question::Wildcard => "a wildcard (`*` or `any`) as the namespace or service label enumerates other tenants' names".to_string(),
        Question::Malformed => "a compression pointer in the question".to_string(),
        Question::Unreadable => "no name a DNS server can read: passes".to_string(),
        Question::Address(owner) if owner.shared => "a reverse name of a shared service's pod".to_string(),
        Question::Address(owner) if owner.tenant == 0 => "a reverse name of an address no single tenant's pod holds: passes".to_string(),
        Question::Address(owner) if owner.tenant == tenant.id().0 => format!("a reverse name of a pod of {from}'s tenant {tenant}"),
        Question::Address(owner) => format!("a reverse name of a pod of tenant {}, not {from}'s tenant {tenant}", tenant_name(owner.tenant)),
        Question::Namespace(found) if found.flags & dns::DNS_NAMESPACE_SHARED != 0 => {
            format!("namespace {namespace} is shared with every tenant (dns.sharedNamespaces, clusterDns, sharedServices)")
        }
        Question::Namespace(found) if found.tenant == tenant.id().0 => format!("namespace {namespace} is in {from}'s tenant {tenant}"),
        Question::Namespace(found) => {
            let pair = verdict == DnsVerdict::Pass;
            let owner = tenant_name(found.tenant);
            if pair {
                format!("namespace {namespace} is tenant {owner}'s; an allowedTenantPairs exception opens it to {tenant}")
            } else {
                format!("namespace {namespace} is tenant {owner}'s, not {from}'s tenant {tenant}")
            }
        }
    }];
    let refused = matches!(verdict, DnsVerdict::Refuse { .. });
    let rule = match verdict {
        DnsVerdict::Refuse { malformed: true, .. } => "dns.malformed",
        _ => "dns.cross-tenant",
    };
    let verdict = match (refused, desired.dns) {
        (false, _) | (true, dns::DNS_OFF) => "allow",
        (true, dns::DNS_DETECT) => "allow",
        (true, _) => "deny",
    };
    if refused {
        reasons.push(match desired.dns {
            dns::DNS_OFF => format!("{rule} would refuse it, but dns.isolation is off"),
            dns::DNS_DETECT => format!("{rule}: reported, not refused (dns.isolation: detect)"),
            _ => format!("{rule}: refused at the pod's egress; the resolver's send fails at once (EPERM)"),
        });
    }
    // NetworkPolicies, enforced or not, never take part in this decision.
    Ok(Explanation { from: from.to_string(), to: name.to_string(), verdict, complete: true, reasons, with_cluster_network_policies: None })
}

/// `moat explain --dns`'s output.
pub fn print(desired: &Desired, from: &PodKey, name: &str, format: Format) -> Result<(), ExplainError> {
    let result = explain_dns(desired, from, name)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&result)?),
        Format::Text => {
            println!("{} asks {}: {}", result.from, result.to, if result.verdict == "allow" { "ANSWERED" } else { "REFUSED" });
            for reason in &result.reasons {
                println!("  - {reason}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{self, Scope};
    use crate::config::{Config, DnsIsolation, TenantPair};
    use crate::model::{Cluster, Namespace, Pod};
    use crate::node::cgroups::PodCgroups;

    fn cluster() -> Cluster {
        let mut cluster = Cluster::default();
        for (name, tenant) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
            let labels = [("tenant".to_string(), tenant.to_string())].into();
            cluster.namespaces.insert(name.into(), Namespace { name: name.into(), labels });
        }
        for (ns, name, ip) in [("a1", "p1", "10.0.0.1"), ("b1", "p4", "10.0.0.2")] {
            let key = PodKey::new(ns, name);
            let pod = Pod {
                key: key.clone(),
                uid: None,
                labels: Default::default(),
                ips: vec![ip.parse().unwrap()],
                node_name: None,
                host_network: false,
                host_pid: false,
                ports: Vec::new(),
            };
            cluster.pods.insert(key, pod);
        }
        cluster
    }

    fn ask(config: &Config, name: &str) -> Explanation {
        let desired = compiler::compile_scoped(&cluster(), config, &PodCgroups::new(), Scope::Cluster).unwrap();
        explain_dns(&desired, &PodKey::new("a1", "p1"), name).unwrap()
    }

    #[test]
    fn says_what_a_question_gets_and_why() {
        let config = Config {
            allowed_tenant_pairs: vec![TenantPair { from: "a".into(), to: "c".into() }],
            ..Config::default()
        };
        let own = ask(&config, "db.a2.svc.cluster.local");
        assert_eq!(own.verdict, "allow", "{own:?}");
        assert!(own.reasons[0].contains("namespace a2 is in a1/p1's tenant a"), "{own:?}");
        let other = ask(&config, "DB.B1.svc.cluster.local");
        assert_eq!(other.verdict, "deny", "{other:?}");
        assert!(other.reasons[0].contains("namespace b1 is tenant b's"), "{other:?}");
        assert!(other.reasons[1].starts_with("dns.cross-tenant: refused"), "{other:?}");
        assert_eq!(ask(&config, "db.c1.svc.cluster.local").verdict, "allow", "allowedTenantPairs");
        assert_eq!(ask(&config, "kube-dns.kube-system.svc.cluster.local").verdict, "allow");
        assert_eq!(ask(&config, "*.*.svc.cluster.local").verdict, "deny");
        let outside = ask(&config, "example.com");
        assert_eq!(outside.verdict, "allow");
        assert!(outside.reasons[0].contains("not a name of a cluster zone"), "{outside:?}");
        let reverse = ask(&config, "2.0.0.10.in-addr.arpa");
        assert_eq!(reverse.verdict, "deny", "{reverse:?}");
        assert!(reverse.reasons[0].contains("a reverse name of a pod of tenant b"), "{reverse:?}");
        assert_eq!(ask(&config, "1.0.0.10.in-addr.arpa").verdict, "allow", "own pod");
        let detect = Config { dns: crate::config::DnsConfig { isolation: DnsIsolation::Detect, ..Default::default() }, ..Config::default() };
        let reported = ask(&detect, "db.b1.svc.cluster.local");
        assert_eq!(reported.verdict, "allow");
        assert!(reported.reasons[1].contains("reported, not refused"), "{reported:?}");
    }

    #[test]
    fn an_unknown_pod_or_a_bad_name_is_an_error() {
        let desired = compiler::compile_scoped(&cluster(), &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap();
        assert!(matches!(explain_dns(&desired, &PodKey::new("a1", "nope"), "x"), Err(ExplainError::UnknownPod(_))));
        let long = "a".repeat(64);
        assert!(matches!(explain_dns(&desired, &PodKey::new("a1", "p1"), &long), Err(ExplainError::NotADnsName(_))));
    }
}
