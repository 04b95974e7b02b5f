//! Tenant DNS isolation as `moat status` shows it: configured at start, then what this kernel
//! let the agent inspect.

use serde::Serialize;

/// Tenant DNS isolation as configured (the `dns` section is read at start only).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsStatus {
    /// `off`, `detect` or `block`.
    pub isolation: &'static str,
    /// The cluster zones, lower case, longest first (as the kernel compares them).
    pub zones: Vec<String>,
    /// Namespaces every tenant may resolve: configured, plus those of `clusterDns` and
    /// `sharedServices`.
    pub shared_namespaces: Vec<String>,
    /// Which questions are decided: `UDP and TCP`; `UDP` when this kernel refused the TCP
    /// programs (`tcp_unavailable` says why); `none` with isolation off.
    pub inspected: &'static str,
    /// Why TCP questions pass unchecked on this kernel, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_unavailable: Option<String>,
}

impl DnsStatus {
    pub fn of(config: &crate::config::Config) -> Self {
        use crate::config::DnsIsolation;
        let isolation = match config.dns.isolation {
            DnsIsolation::Off => "off",
            DnsIsolation::Detect => "detect",
            DnsIsolation::Block => "block",
        };
        let zones = crate::compiler::dns::zones(config).into_values().map(|zone| zone_name(&zone)).collect();
        let shared_namespaces = crate::compiler::dns::shared_namespaces(config).into_iter().collect();
        // Until the TCP programs are attached (`with_tcp`).
        let inspected = if config.dns.isolation == DnsIsolation::Off { "none" } else { "UDP" };
        Self { isolation, zones, shared_namespaces, inspected, tcp_unavailable: None }
    }

    /// After attaching the TCP programs: `Err` says why this kernel refused them.
    pub fn with_tcp(&mut self, attached: Result<(), String>) {
        match attached {
            Ok(()) => self.inspected = "UDP and TCP",
            Err(reason) => self.tcp_unavailable = Some(reason),
        }
    }
}

/// `\x07cluster\x05local\x00` → `cluster.local`.
fn zone_name(zone: &moat_common::dns::DnsZone) -> String {
    let wire = &zone.name[..(zone.len as usize).min(zone.name.len())];
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at).filter(|len| **len != 0) {
        let label = wire.get(at + 1..at + 1 + len as usize).unwrap_or_default();
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len as usize;
    }
    labels.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DnsConfig, DnsIsolation};

    #[test]
    fn dns_status_says_the_mode_zones_and_shared_namespaces() {
        let config = Config {
            dns: DnsConfig { isolation: DnsIsolation::Detect, zones: vec!["Cluster.Local".into(), "corp.example.com".into()], shared_namespaces: vec!["tools".into()] },
            ..Config::default()
        };
        let status = DnsStatus::of(&config);
        assert_eq!(status.isolation, "detect");
        assert_eq!(status.zones, ["corp.example.com", "cluster.local"], "as compared: longest first, lower case");
        assert_eq!(status.shared_namespaces, ["kube-system", "tools"], "configured plus clusterDns's");
        assert_eq!(DnsStatus::of(&Config::default()).isolation, "block");
        assert_eq!(status.inspected, "UDP", "before the TCP programs are attached");
        let mut refused = status.clone();
        refused.with_tcp(Err("sk_msg: load: EINVAL".into()));
        assert_eq!((refused.inspected, refused.tcp_unavailable.as_deref()), ("UDP", Some("sk_msg: load: EINVAL")));
        let mut both = status;
        both.with_tcp(Ok(()));
        assert_eq!((both.inspected, both.tcp_unavailable), ("UDP and TCP", None));
        let off = Config { dns: DnsConfig { isolation: DnsIsolation::Off, ..DnsConfig::default() }, ..Config::default() };
        assert_eq!(DnsStatus::of(&off).inspected, "none");
    }
}
