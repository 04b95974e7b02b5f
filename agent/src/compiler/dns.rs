//! Tenant DNS isolation's map entries: every namespace's tenant by name (`DNS_NAMESPACES`),
//! every Service ClusterIP's namespace (`DNS_SERVICES`), the cluster zones (`DNS_ZONES`) and
//! the mode (`Settings::dns`).

use std::collections::{BTreeMap, BTreeSet};

use moat_common::dns::{
    self, DnsNamespace, DnsZone, NamespaceKey, DNS_BLOCK, DNS_DETECT, DNS_NAMESPACE_SHARED,
    DNS_OFF, NAME_BUF,
};

use crate::config::{Config, DnsIsolation};
use crate::model::{Service, TenantName};

/// `Settings::dns` for `config`.
pub fn mode(config: &Config) -> u32 {
    match config.dns.isolation {
        DnsIsolation::Off => DNS_OFF,
        DnsIsolation::Detect => DNS_DETECT,
        DnsIsolation::Block => DNS_BLOCK,
    }
}

/// The zones by slot, longest first: of two nested zones the longer decides, as CoreDNS
/// matches the most specific zone. Validated config cannot fail here; a zone that does not
/// fit is left out rather than cut.
pub fn zones(config: &Config) -> BTreeMap<u32, DnsZone> {
    let mut names: Vec<String> = config.dns.zones.iter().map(|zone| zone.to_ascii_lowercase()).collect();
    names.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    names.dedup();
    let mut zones = BTreeMap::new();
    for name in names.iter().take(dns::ZONE_SLOTS as usize) {
        let mut wire = [0u8; NAME_BUF];
        let Some(len) = dns::to_wire(name, &mut wire).filter(|len| *len <= dns::ZONE_MAX) else {
            continue;
        };
        let mut zone = DnsZone { len: len as u32, labels: name.split('.').count() as u32, name: [0; dns::ZONE_MAX] };
        zone.name[..len].copy_from_slice(&wire[..len]);
        zones.insert(zones.len() as u32, zone);
    }
    zones
}

/// Namespaces every tenant may resolve: the configured ones and those of the shared
/// services (cluster DNS included), which every tenant may reach anyway.
pub fn shared_namespaces(config: &Config) -> BTreeSet<String> {
    let mut shared: BTreeSet<String> = config.dns.shared_namespaces.iter().cloned().collect();
    if config.cluster_dns.enabled {
        shared.insert(config.cluster_dns.namespace.clone());
    }
    shared.extend(config.shared_services.iter().map(|service| service.namespace.clone()));
    shared
}

/// The `DNS_NAMESPACES` entry of `namespace`, if a question can name it.
pub fn entry(
    shared: &BTreeSet<String>,
    namespace: &str,
    tenant: &TenantName,
) -> Option<(NamespaceKey, DnsNamespace)> {
    let key = NamespaceKey::of(namespace)?;
    let flags = if shared.contains(namespace) { DNS_NAMESPACE_SHARED } else { 0 };
    Some((key, DnsNamespace { tenant: tenant.id().0, flags, _pad: 0 }))
}

/// Every namespace's entry (the full compile).
pub fn namespaces(
    config: &Config,
    of_namespace: &BTreeMap<String, TenantName>,
) -> BTreeMap<NamespaceKey, DnsNamespace> {
    let shared = shared_namespaces(config);
    of_namespace
        .iter()
        .filter_map(|(namespace, tenant)| entry(&shared, namespace, tenant))
        .collect()
}

/// The `DNS_SERVICES` entries `service` claims: each ClusterIP → its namespace. None when the
/// namespace is no DNS label (no question can name it).
pub fn service_claims(service: &Service) -> impl Iterator<Item = ([u8; 16], NamespaceKey)> + '_ {
    let key = NamespaceKey::of(&service.key.namespace);
    service.cluster_ips.iter().filter_map(move |ip| Some((super::keys::mapped(*ip), key?)))
}

/// Every ClusterIP's namespace (the full compile). Of two Services claiming one address
/// (the API server never allows it; files might), the first in key order keeps it.
pub fn services<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeMap<[u8; 16], NamespaceKey> {
    let mut entries = BTreeMap::new();
    for service in services {
        for (address, namespace) in service_claims(service) {
            entries.entry(address).or_insert(namespace);
        }
    }
    entries
}
