extern crate std;
use std::collections::BTreeMap;

use super::*;

struct Maps {
    zones: [DnsZone; ZONE_SLOTS as usize],
    namespaces: BTreeMap<NamespaceKey, DnsNamespace>,
    pairs: std::vec::Vec<TenantPairKey>,
}

impl DnsMaps for Maps {
    fn zone(&self, slot: u32) -> Option<&DnsZone> {
        self.zones.get(slot as usize)
    }
    fn namespace(&self, key: &NamespaceKey) -> Option<DnsNamespace> {
        self.namespaces.get(key).copied()
    }
    fn address(&self, addr: &[u8; 16]) -> Option<AddressOwner> {
        match addr {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2] => Some(AddressOwner { tenant: 2, shared: false }),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1] => Some(AddressOwner { tenant: 1, shared: false }),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 53] => Some(AddressOwner { tenant: 9, shared: true }),
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2b] => Some(AddressOwner { tenant: 2, shared: false }),
            _ => None,
        }
    }
    /// Services: 10.96.0.21 and fd00:96::21 in beta, 10.96.0.10 in kube-system, 10.0.0.1 (a pod's
    /// address too) in beta.
    fn service(&self, addr: &[u8; 16]) -> Option<DnsNamespace> {
        let namespace = match addr {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 21] | [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1] => "beta",
            [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21] => "beta",
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10] => "kube-system",
            _ => return None,
        };
        self.namespace(&NamespaceKey::of(namespace)?)
    }
    fn tenant_pair(&self, key: &TenantPairKey) -> bool {
        self.pairs.contains(key)
    }
}

fn zone(name: &str) -> DnsZone {
    let mut wire = [0u8; NAME_BUF];
    let len = to_wire(name, &mut wire).unwrap();
    let mut zone = DnsZone { len: len as u32, labels: name.split('.').count() as u32, name: [0; ZONE_MAX] };
    zone.name[..len].copy_from_slice(&wire[..len]);
    zone
}

fn maps() -> Maps {
    let mut namespaces = BTreeMap::new();
    namespaces.insert(NamespaceKey::of("alpha").unwrap(), DnsNamespace { tenant: 1, flags: 0, _pad: 0 });
    namespaces.insert(NamespaceKey::of("beta").unwrap(), DnsNamespace { tenant: 2, flags: 0, _pad: 0 });
    namespaces.insert(NamespaceKey::of("gamma").unwrap(), DnsNamespace { tenant: 3, flags: 0, _pad: 0 });
    namespaces.insert(NamespaceKey::of("kube-system").unwrap(), DnsNamespace { tenant: 9, flags: DNS_NAMESPACE_SHARED, _pad: 0 });
    Maps {
        zones: [zone("cluster.local"), zone("corp.example.com"), DnsZone::EMPTY, DnsZone::EMPTY],
        namespaces,
        pairs: std::vec![TenantPairKey { src: 1, dst: 3 }],
    }
}

fn ask(name: &str, tenant: u64) -> DnsVerdict {
    let maps = maps();
    let mut scratch = DnsScratch::EMPTY;
    let len = to_wire(name, &mut scratch.name).unwrap();
    decide(classify(&mut scratch, len, &maps), tenant, &maps)
}

fn question(bytes: &[u8]) -> Question {
    let mut scratch = DnsScratch::EMPTY;
    scratch.name[..bytes.len()].copy_from_slice(bytes);
    classify(&mut scratch, bytes.len(), &maps())
}

const REFUSED_BETA: DnsVerdict = DnsVerdict::Refuse { tenant: 2, malformed: false };
const REFUSED_WILDCARD: DnsVerdict = DnsVerdict::Refuse { tenant: 0, malformed: false };

#[test]
fn own_shared_and_paired_namespaces_resolve_others_do_not() {
    assert_eq!(ask("web.alpha.svc.cluster.local", 1), DnsVerdict::Pass);
    assert_eq!(ask("web.beta.svc.cluster.local", 1), REFUSED_BETA);
    assert_eq!(ask("kube-dns.kube-system.svc.cluster.local", 1), DnsVerdict::Pass);
    assert_eq!(ask("db.gamma.svc.cluster.local", 1), DnsVerdict::Pass, "allowedTenantPairs");
    assert_eq!(ask("db.alpha.svc.cluster.local", 3), DnsVerdict::Refuse { tenant: 1, malformed: false }, "pairs are directional");
    assert_eq!(ask("web.beta.svc.cluster.local", 0), REFUSED_BETA, "an unattributed pod");
    assert_eq!(ask("kube-dns.kube-system.svc.cluster.local", 0), DnsVerdict::Pass);
}

#[test]
fn every_name_shape_under_a_namespace_counts() {
    for name in [
        "beta.svc.cluster.local",
        "_http._tcp.web.beta.svc.cluster.local",
        "10-0-0-1.beta.pod.cluster.local",
        "WEB.Beta.SVC.Cluster.LOCAL.",
        "web.beta.svc.corp.example.com",
        "web.alpha.svc.cluster.local.beta.svc.cluster.local",
    ] {
        assert_eq!(ask(name, 1), REFUSED_BETA, "{name}");
    }
}

#[test]
fn wildcards_never_resolve() {
    for name in ["*.*.svc.cluster.local", "any.any.svc.cluster.local", "web.*.svc.cluster.local", "*.alpha.svc.cluster.local", "_http._tcp.ANY.alpha.svc.cluster.local", "x.any.pod.cluster.local"] {
        assert_eq!(ask(name, 1), REFUSED_WILDCARD, "{name}");
    }
}

#[test]
fn everything_else_passes() {
    for name in [
        "example.com",
        "",
        "cluster.local",
        "svc.cluster.local",
        "web.svc.cluster.local",
        "web.beta.svc.cluster.local.example.com",
        "web.beta.svcx.cluster.local",
        "web.nosuch.svc.cluster.local",
        "web.beta.svc.other.local",
        "web.beta.svc.cluster",
        "any.example.com",
    ] {
        assert_eq!(ask(name, 1), DnsVerdict::Pass, "{name}");
    }
}

#[test]
fn compression_pointers_are_refused_unreadable_names_pass() {
    assert_eq!(question(b"\x03web\x04beta\x03svc\xc0\x0c"), Question::Malformed);
    assert_eq!(question(b"\xc0\x0c"), Question::Malformed);
    let maps = maps();
    assert_eq!(decide(Question::Malformed, 1, &maps), DnsVerdict::Refuse { tenant: 0, malformed: true });
    let unreadable = [
        &b"\x03web\x04beta\x03svc\x07cluster\x05local"[..],
        b"\x40aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x00",
        b"\x80\x00",
        b"",
        b"\x05ab",
        b"moat-probe",
    ];
    for bytes in unreadable {
        assert_eq!(question(bytes), Question::Unreadable, "{bytes:?}");
        assert_eq!(decide(question(bytes), 1, &maps), DnsVerdict::Pass, "{bytes:?}");
    }
    // 256 bytes of one-byte labels never end within the limit.
    let long: std::vec::Vec<u8> = (0..NAME_BUF).map(|i| if i % 2 == 0 { 1 } else { b'a' }).collect();
    assert_eq!(question(&long), Question::Unreadable);
    // A name that ends exactly at the limit is read.
    let mut max = std::vec::Vec::new();
    while max.len() < 252 {
        max.extend_from_slice(b"\x01a");
    }
    max.extend_from_slice(b"\x01b\x00");
    assert_eq!(max.len(), 255);
    assert_eq!(question(&max), Question::Outside);
}

#[test]
fn namespace_keys_are_lower_case_labels() {
    assert!(NamespaceKey::of("Alpha").is_none());
    assert!(NamespaceKey::of("a.b").is_none());
    assert!(NamespaceKey::of("").is_none());
    assert!(NamespaceKey::of(&"a".repeat(64)).is_none());
    assert!(NamespaceKey::of(&"a".repeat(63)).is_some());
}

#[test]
fn lower_cases_ascii_letters_only() {
    for byte in 0..=255u8 {
        let want = if byte.is_ascii_uppercase() { byte.to_ascii_lowercase() } else { byte };
        assert_eq!(lower(byte), want, "{byte:#x}");
    }
}

#[test]
fn reverse_names_of_other_tenants_pods_are_refused() {
    assert_eq!(ask("2.0.0.10.in-addr.arpa", 1), REFUSED_BETA);
    assert_eq!(ask("2.0.0.10.IN-ADDR.ARPA.", 1), REFUSED_BETA);
    assert_eq!(ask("2.0.0.10.in-addr.arpa", 2), DnsVerdict::Pass, "own pod");
    assert_eq!(ask("1.0.0.10.in-addr.arpa", 1), DnsVerdict::Pass, "own pod");
    assert_eq!(ask("53.0.0.10.in-addr.arpa", 1), DnsVerdict::Pass, "a shared service's pod");
    assert_eq!(ask("9.0.0.10.in-addr.arpa", 1), DnsVerdict::Pass, "no pod");
    let v6 = "b.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(ask(v6, 1), REFUSED_BETA);
    assert_eq!(ask(&v6.to_uppercase(), 1), REFUSED_BETA);
    // Partial and odd reverse names name no address: the server has no pod to answer for.
    for name in ["0.0.10.in-addr.arpa", "x.2.0.0.10.in-addr.arpa", "256.0.0.10.in-addr.arpa", "02a.0.0.10.in-addr.arpa", "2.0.0.0.10.in-addr.arpa", "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"] {
        assert_eq!(ask(name, 1), DnsVerdict::Pass, "{name}");
    }
}

#[test]
fn reverse_names_of_other_tenants_services_are_refused() {
    assert_eq!(ask("21.0.96.10.in-addr.arpa", 1), REFUSED_BETA);
    assert_eq!(ask("21.0.96.10.in-addr.arpa", 2), DnsVerdict::Pass, "own Service");
    assert_eq!(ask("10.0.96.10.in-addr.arpa", 1), DnsVerdict::Pass, "a Service in a shared namespace");
    assert_eq!(ask("99.0.96.10.in-addr.arpa", 1), DnsVerdict::Pass, "no Service");
    let v6 = "1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(ask(v6, 1), REFUSED_BETA);
    // A pod's address is the pod's, whatever Service also claims it.
    assert_eq!(ask("1.0.0.10.in-addr.arpa", 1), DnsVerdict::Pass, "own pod");
    let maps = maps();
    let mut scratch = DnsScratch::EMPTY;
    let len = to_wire("21.0.96.10.in-addr.arpa", &mut scratch.name).unwrap();
    assert_eq!(classify(&mut scratch, len, &maps), Question::Service(DnsNamespace { tenant: 2, flags: 0, _pad: 0 }));
}
