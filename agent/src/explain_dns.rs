//! `moat explain --dns NAME --from NS/POD`: what the datapath does with a pod's DNS question,
//! decided by the kernel's own `moat_common::dns` over the compiled entries.

use moat_common::dns::{self, AddressOwner, DnsMaps, DnsNamespace, DnsScratch, DnsVerdict, DnsZone, NamespaceKey, Question};
use moat_common::maps::TenantPairKey;

use std::cell::Cell;

use crate::compiler::Desired;
use crate::explain::{ExplainError, Explanation, Format};
use crate::model::{Cluster, PodKey};

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

    fn service(&self, addr: &[u8; 16]) -> Option<DnsNamespace> {
        self.dns_services.get(addr).and_then(|namespace| self.dns_namespaces.get(namespace)).copied()
    }

    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        self.tenant_pairs.contains(key)
    }
}

/// The compiled entries, remembering which Service address a reverse name was looked up
/// as, so the explanation can name the Service.
struct Asked<'a> {
    desired: &'a Desired,
    service_address: Cell<Option<[u8; 16]>>,
}

impl DnsMaps for Asked<'_> {
    fn zone(&self, slot: u32) -> Option<&DnsZone> {
        self.desired.zone(slot)
    }

    fn namespace(&self, key: &NamespaceKey) -> Option<DnsNamespace> {
        self.desired.namespace(key)
    }

    fn address(&self, addr: &[u8; 16]) -> Option<AddressOwner> {
        self.desired.address(addr)
    }

    fn service(&self, addr: &[u8; 16]) -> Option<DnsNamespace> {
        self.service_address.set(Some(*addr));
        self.desired.service(addr)
    }

    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        self.desired.tenant_pair(key)
    }
}

/// The fate of the question `name` (any record type) asked by `from`.
pub fn explain_dns(cluster: &Cluster, desired: &Desired, from: &PodKey, name: &str) -> Result<Explanation, ExplainError> {
    let unknown = || ExplainError::UnknownPod(from.clone());
    if !cluster.pods.contains_key(from) {
        return Err(unknown());
    }
    let tenant = desired.index.tenant_of(from).ok_or_else(unknown)?;
    let mut scratch = DnsScratch::EMPTY;
    let len = dns::to_wire(name, &mut scratch.name).ok_or_else(|| ExplainError::NotADnsName(name.to_string()))?;
    let asked = Asked { desired, service_address: Cell::new(None) };
    let question = dns::classify(&mut scratch, len, &asked);
    // The Service whose address it is: the first in key order, as the compile keeps it.
    let service = asked.service_address.get().and_then(|address| {
        let mut services = cluster.services.values();
        services.find(|service| service.cluster_ips.iter().any(|ip| crate::compiler::mapped(*ip) == address))
    });
    let service = service.map(|service| format!("Service {}", service.key)).unwrap_or_else(|| "a Service".into());
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
        Question::Service(found) if found.flags & dns::DNS_NAMESPACE_SHARED != 0 => {
            format!("a reverse name of {service}'s address, in a namespace shared with every tenant")
        }
        Question::Service(found) if found.tenant == 0 => format!("a reverse name of {service}'s address, in no tenant: passes"),
        Question::Service(found) if found.tenant == tenant.id().0 => format!("a reverse name of {service}'s address, in {from}'s tenant {tenant}"),
        Question::Service(found) => {
            let owner = tenant_name(found.tenant);
            if verdict == DnsVerdict::Pass {
                format!("a reverse name of {service}'s address, tenant {owner}'s; an allowedTenantPairs exception opens it to {tenant}")
            } else {
                format!("a reverse name of {service}'s address, tenant {owner}'s, not {from}'s tenant {tenant}")
            }
        }
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
    Ok(Explanation { from: from.to_string(), to: name.to_string(), verdict, complete: true, reasons })
}

/// `moat explain --dns`'s output.
pub fn print(cluster: &Cluster, desired: &Desired, from: &PodKey, name: &str, format: Format) -> Result<(), ExplainError> {
    let result = explain_dns(cluster, desired, from, name)?;
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
    use crate::model::{Namespace, Pod, Service};
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
                ports: Vec::new().into(),
            };
            cluster.pods.insert(key, pod);
        }
        for (ns, name, ips) in [("b1", "db", ["10.96.0.21", "fd00:96::21"]), ("a2", "web", ["10.96.0.12", "fd00:96::12"]), ("kube-system", "kube-dns", ["10.96.0.10", "fd00:96::10"])] {
            let key = crate::model::ObjectKey::new(ns, name);
            let cluster_ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
            cluster.services.insert(key.clone(), Service { key, cluster_ips });
        }
        cluster.namespaces.insert("kube-system".into(), Namespace { name: "kube-system".into(), labels: Default::default() });
        cluster
    }

    fn ask(config: &Config, name: &str) -> Explanation {
        let cluster = cluster();
        let desired = compiler::compile_scoped(&cluster, config, &PodCgroups::new(), Scope::Cluster).unwrap();
        explain_dns(&cluster, &desired, &PodKey::new("a1", "p1"), name).unwrap()
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
        let service = ask(&config, "21.0.96.10.in-addr.arpa");
        assert_eq!(service.verdict, "deny", "{service:?}");
        assert!(service.reasons[0].contains("Service b1/db's address, tenant b's"), "{service:?}");
        let v6 = "1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(ask(&config, v6).verdict, "deny", "{v6}");
        let own = ask(&config, "12.0.96.10.in-addr.arpa");
        assert_eq!(own.verdict, "allow", "{own:?}");
        assert!(own.reasons[0].contains("Service a2/web's address, in a1/p1's tenant a"), "{own:?}");
        let shared = ask(&config, "10.0.96.10.in-addr.arpa");
        assert_eq!(shared.verdict, "allow", "{shared:?}");
        assert!(shared.reasons[0].contains("Service kube-system/kube-dns's address, in a namespace shared"), "{shared:?}");
        let detect = Config { dns: crate::config::DnsConfig { isolation: DnsIsolation::Detect, ..Default::default() }, ..Config::default() };
        let reported = ask(&detect, "db.b1.svc.cluster.local");
        assert_eq!(reported.verdict, "allow");
        assert!(reported.reasons[1].contains("reported, not refused"), "{reported:?}");
    }

    #[test]
    fn an_unknown_pod_or_a_bad_name_is_an_error() {
        let cluster = cluster();
        let desired = compiler::compile_scoped(&cluster, &Config::default(), &PodCgroups::new(), Scope::Cluster).unwrap();
        assert!(matches!(explain_dns(&cluster, &desired, &PodKey::new("a1", "nope"), "x"), Err(ExplainError::UnknownPod(_))));
        let long = "a".repeat(64);
        assert!(matches!(explain_dns(&cluster, &desired, &PodKey::new("a1", "p1"), &long), Err(ExplainError::NotADnsName(_))));
    }
}
