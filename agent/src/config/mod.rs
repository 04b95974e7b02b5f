//! The agent's configuration file (YAML). Every field has a default; unknown fields are
//! errors, so a typo never silently weakens isolation.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod budget;
pub mod guard;

use crate::model::{Labels, Protocol};

pub use budget::BudgetConfig;
pub use guard::{GuardConfig, GuardMode};
pub use crate::model::tenant::TenantSource;
/// Where address prefixes are defined (the model); configs write them too.
pub use crate::model::Cidr;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Where a namespace's tenant comes from: `{label: KEY}` (default `{label: tenant}`),
    /// `{capsule: {}}` or `{hnc: {}}`. See [`TenantSource`].
    pub tenant_source: Option<TenantSource>,
    /// Older spelling of `tenantSource: {label: KEY}`; still accepted, not with `tenantSource`.
    pub tenant_label: Option<String>,
    /// Name of this node; pods scheduled elsewhere are remote. Unset: every pod whose cgroup
    /// is found below `cgroup_root` is local (the lab, a one-node cluster).
    pub node_name: Option<String>,
    /// cgroup v2 directory holding every pod's cgroup. Relative paths are taken below the
    /// cgroup v2 mount found in /proc/self/mountinfo. Unset: `kubepods.slice` (kubelet with
    /// the systemd cgroup driver) or `kubepods` (cgroupfs driver), whichever exists.
    pub cgroup_root: Option<PathBuf>,
    /// How pod cgroups are named below `cgroup_root`.
    pub cgroup_layout: CgroupLayoutKind,
    /// Where bpffs is (or gets) mounted.
    pub bpffs_root: PathBuf,
    /// Pins go to `<bpffs_root>/moat/<instance>`; two agents with different instances never
    /// share state (the lab runs one per lab).
    pub instance: String,
    /// Traffic with endpoints that are not pods (the host, the outside world).
    pub unknown_endpoints: Action,
    /// Deny traffic within a tenant unless a NetworkPolicy allows it (admin exceptions such as
    /// cluster DNS still apply). Off: pods no policy selects talk freely within their tenant.
    pub default_deny_in_tenant: bool,
    pub cluster_dns: ClusterDns,
    pub shared_services: Vec<SharedService>,
    pub allowed_tenant_pairs: Vec<TenantPair>,
    /// Pod address ranges: an address in them that is not (yet) a known pod is pending,
    /// so a pod the agent has not heard of gets no cross-tenant traffic.
    pub cluster_cidrs: Vec<Cidr>,
    /// Addresses outside the cluster that belong to a tenant (a tenant's database subnet).
    pub tenant_networks: Vec<TenantNetwork>,
    /// How often the manifest files and cgroups are re-read, in milliseconds.
    pub poll_interval_ms: u64,
    /// How often API discovery looks for policy kinds moat does not enforce (a
    /// ClusterNetworkPolicy CRD installed later), and lists their objects, in milliseconds.
    pub api_discovery_interval_ms: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`host:port`; port 0 picks one).
    pub metrics_address: String,
    /// The admin API's unix socket (`moat observe`, `moat status`). Unset:
    /// `/run/moat/<instance>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// The event pipeline: aggregation, buffering and the optional file sink.
    pub events: EventsConfig,
    /// Kubernetes Events on the offending pod for detections.
    pub kube_events: KubeEventsConfig,
    /// The runtime guard: a mode per detection (see `guard::GuardConfig` in this module).
    pub guard: GuardConfig,
    /// How the ICMP program attaches to pod interfaces: TCX links where the kernel has them.
    pub tc_attach: TcAttach,
    /// Tenant DNS isolation: which cluster names a pod may resolve (see `DnsConfig`).
    pub dns: DnsConfig,
}

/// Tenant DNS isolation (`dns`): a pod's questions about `<ns>.svc.<zone>` and
/// `<ns>.pod.<zone>` names are answered only for its own tenant's namespaces and shared ones.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsConfig {
    pub isolation: DnsIsolation,
    /// Cluster zones (`cluster.local`), at most `moat_common::dns::ZONE_SLOTS`.
    pub zones: Vec<String>,
    /// Namespaces every tenant may resolve names in. The namespaces of `clusterDns` and of
    /// `sharedServices` are shared as well.
    pub shared_namespaces: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            isolation: DnsIsolation::Block,
            zones: vec!["cluster.local".into()],
            shared_namespaces: vec!["default".into(), "kube-system".into(), "kube-public".into()],
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsIsolation {
    Off,
    /// Report the questions `block` would refuse, answer them all.
    Detect,
    Block,
}

/// The event pipeline between the ring buffer and the sinks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Identical events within this window are reported once more at its end, with a count.
    pub aggregation_window_ms: u64,
    /// Flow events buffered between the ring-buffer reader and the sinks, shared fairly by
    /// the tenants: when full, the tenant with the most waiting loses one (counted).
    pub buffer: usize,
    /// Detections buffered, apart from flow events, which can neither fill nor delay them.
    pub detection_buffer: usize,
    /// Distinct flow events of one shape (one pod to one remote namespace, same rule) reported
    /// one by one per window; beyond, they are folded into one report with their spread.
    /// 0: never fold distinct events.
    pub flood_threshold: usize,
    /// Per-tenant and per-pod budgets before the ring buffer (see `events::budget`).
    pub budget: BudgetConfig,
    /// JSON lines written to a file as well as stdout.
    pub file: Option<FileSinkConfig>,
    /// Also report every newly admitted flow (one event per flow, not per packet), for
    /// `moat observe --verdict allow`. Off by default: on a busy node it is a lot of events.
    pub report_allowed_flows: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            aggregation_window_ms: 1000,
            buffer: 4096,
            detection_buffer: 4096,
            flood_threshold: 16,
            budget: BudgetConfig::default(),
            file: None,
            report_allowed_flows: false,
        }
    }
}

/// A file sink with size-based rotation: `path`, `path.1` ... `path.<filesKept>`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    #[serde(default = "default_max_size")]
    pub max_size_bytes: u64,
    #[serde(default = "default_files_kept")]
    pub files_kept: u32,
}

fn default_max_size() -> u64 {
    10 << 20
}

fn default_files_kept() -> u32 {
    5
}

/// Kubernetes Events for detections, posted on the offending pod.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubeEventsConfig {
    pub enabled: bool,
    /// API server URL. Unset: the in-cluster service account (or kubeconfig) is used.
    pub api_server: Option<String>,
    /// At most one Event per pod and detection within this many seconds.
    pub min_interval_seconds: u64,
    /// At most this many Events per minute in all.
    pub max_per_minute: u32,
}

impl Default for KubeEventsConfig {
    fn default() -> Self {
        Self { enabled: false, api_server: None, min_interval_seconds: 60, max_per_minute: 30 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tenant_source: None,
            tenant_label: None,
            node_name: None,
            cgroup_root: None,
            cgroup_layout: CgroupLayoutKind::Lab,
            bpffs_root: PathBuf::from("/sys/fs/bpf"),
            instance: "default".into(),
            unknown_endpoints: Action::Allow,
            default_deny_in_tenant: false,
            cluster_dns: ClusterDns::default(),
            shared_services: Vec::new(),
            allowed_tenant_pairs: Vec::new(),
            cluster_cidrs: Vec::new(),
            tenant_networks: Vec::new(),
            poll_interval_ms: 250,
            api_discovery_interval_ms: 30_000,
            metrics_address: "0.0.0.0:9476".into(),
            admin_socket: None,
            events: EventsConfig::default(),
            kube_events: KubeEventsConfig::default(),
            guard: GuardConfig::default(),
            tc_attach: TcAttach::Auto,
            dns: DnsConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX (pinned bpf_links) on Linux >= 6.6, else netlink.
    Auto,
    Tcx,
    /// A cls_bpf filter on the clsact qdisc (any kernel); for CNIs that need it.
    Netlink,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayoutKind {
    /// `<root>/<namespace>_<pod>[/<container>...]`, as `moat lab` creates them.
    Lab,
    /// The kubelet's pod cgroups (systemd or cgroupfs driver; containerd or CRI-O), by pod
    /// UID; see docs/kubernetes.md.
    Kubelet,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterDns {
    pub enabled: bool,
    pub namespace: String,
    pub match_labels: Labels,
    pub ports: Vec<PortSpec>,
}

impl Default for ClusterDns {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: "kube-system".into(),
            match_labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            ports: vec![
                PortSpec { port: 53, protocol: Protocol::Udp },
                PortSpec { port: 53, protocol: Protocol::Tcp },
            ],
        }
    }
}

/// Pods every tenant may reach (on `ports`, or on any port when empty).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedService {
    pub name: String,
    pub namespace: String,
    /// Empty: every pod of the namespace.
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default = "default_protocol", deserialize_with = "deserialize_protocol")]
    pub protocol: Protocol,
}

/// `from` may open flows to `to` (one direction; list both for both).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantPair {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantNetwork {
    pub cidr: Cidr,
    pub tenant: String,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

fn deserialize_protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    let text = String::deserialize(d)?;
    Protocol::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("unknown protocol {text:?} (want TCP, UDP or SCTP)"))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: field {field}: {message}")]
    Invalid { path: PathBuf, field: String, message: String },
}

impl Config {
    /// Where tenants come from, `tenantLabel` folded in.
    pub fn tenants(&self) -> TenantSource {
        match (&self.tenant_source, &self.tenant_label) {
            (Some(source), _) => source.clone(),
            (None, Some(label)) => TenantSource::Label(label.clone()),
            (None, None) => TenantSource::default(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let deserializer = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let field = error.path().to_string();
                invalid(field, error.into_inner().to_string())
            })?
        };
        config.validate().map_err(|(field, message)| invalid(field, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.tenant_label.is_some() && self.tenant_source.is_some() {
            return Err(("tenantLabel".into(), "set tenantSource or tenantLabel, not both".into()));
        }
        if self.tenant_label.as_deref() == Some("") {
            return Err(("tenantLabel".into(), "must not be empty".into()));
        }
        if matches!(&self.tenant_source, Some(TenantSource::Label(key)) if key.is_empty()) {
            return Err(("tenantSource.label".into(), "must not be empty".into()));
        }
        let instance_ok = !self.instance.is_empty()
            && self.instance.len() <= 64
            && self.instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !instance_ok {
            return Err(("instance".into(), "must be 1-64 characters of [A-Za-z0-9_-]".into()));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return Err(("pollIntervalMs".into(), "must be 1..=60000".into()));
        }
        if !(100..=3_600_000).contains(&self.api_discovery_interval_ms) {
            return Err(("apiDiscoveryIntervalMs".into(), "must be 100..=3600000".into()));
        }
        self.validate_observability()?;
        self.guard.validate()?;
        self.dns.validate()?;
        if self.shared_services.len() > MAX_SHARED_SERVICES {
            return Err(("sharedServices".into(), format!("at most {MAX_SHARED_SERVICES} services (a pod's group of services is a 32-bit mask, one bit is cluster DNS)")));
        }
        for (index, service) in self.shared_services.iter().enumerate() {
            if service.name.is_empty() || service.namespace.is_empty() {
                return Err((
                    format!("sharedServices[{index}]"),
                    "name and namespace are required".into(),
                ));
            }
        }
        for (index, port) in self.cluster_dns.ports.iter().enumerate() {
            if port.port == 0 {
                return Err((format!("clusterDns.ports[{index}].port"), "must be 1..=65535".into()));
            }
        }
        for (index, service) in self.shared_services.iter().enumerate() {
            for (port_index, port) in service.ports.iter().enumerate() {
                if port.port == 0 {
                    return Err((
                        format!("sharedServices[{index}].ports[{port_index}].port"),
                        "must be 1..=65535".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl DnsConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        use moat_common::dns::{ZONE_MAX, ZONE_SLOTS};
        if self.zones.len() > ZONE_SLOTS as usize {
            return Err(("dns.zones".into(), format!("at most {ZONE_SLOTS} zones")));
        }
        for (index, zone) in self.zones.iter().enumerate() {
            let labels_ok = zone.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            // Wire form: a length byte per label, the labels joined, the final zero byte.
            if !labels_ok || zone.len() + 2 > ZONE_MAX {
                return Err((
                    format!("dns.zones[{index}]"),
                    format!("{zone:?} is not a DNS name of letters, digits and '-' (at most {} bytes, no trailing dot)", ZONE_MAX - 2),
                ));
            }
        }
        for (index, namespace) in self.shared_namespaces.iter().enumerate() {
            if moat_common::dns::NamespaceKey::of(namespace).is_none() {
                return Err((format!("dns.sharedNamespaces[{index}]"), format!("{namespace:?} is not a namespace name (1-63 bytes of a-z, 0-9, -)")));
            }
        }
        Ok(())
    }
}

/// Most `sharedServices` entries: with cluster DNS, one bit each of a pod's 32-bit group id.
pub const MAX_SHARED_SERVICES: usize = 31;

impl Config {
    /// The admin socket path: `adminSocket`, else `/run/moat/<instance>/admin.sock`.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| Path::new("/run/moat").join(&self.instance).join("admin.sock"))
    }

    fn validate_observability(&self) -> Result<(), (String, String)> {
        if self.metrics_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(("metricsAddress".into(), format!("{:?} is not host:port", self.metrics_address)));
        }
        if self.events.aggregation_window_ms > 60_000 {
            return Err(("events.aggregationWindowMs".into(), "must be 0..=60000".into()));
        }
        if self.events.buffer == 0 || self.events.buffer > 1 << 20 {
            return Err(("events.buffer".into(), "must be 1..=1048576".into()));
        }
        if self.events.detection_buffer == 0 || self.events.detection_buffer > 1 << 20 {
            return Err(("events.detectionBuffer".into(), "must be 1..=1048576".into()));
        }
        self.events.budget.validate()?;
        if let Some(file) = &self.events.file {
            if file.max_size_bytes < 4096 {
                return Err(("events.file.maxSizeBytes".into(), "must be at least 4096".into()));
            }
            if file.files_kept == 0 || file.files_kept > 100 {
                return Err(("events.file.filesKept".into(), "must be 1..=100".into()));
            }
        }
        if self.kube_events.max_per_minute == 0 {
            return Err(("kubeEvents.maxPerMinute".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("moat.yaml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_field_is_named() {
        let error = parse("tenantLabell: team\n").unwrap_err().to_string();
        assert!(error.contains("moat.yaml"), "{error}");
        assert!(error.contains("tenantLabell"), "{error}");
    }

    #[test]
    fn bad_cidr_names_the_field() {
        let error = parse("clusterCidrs: [\"10.0.0.0/33\"]\n").unwrap_err().to_string();
        assert!(error.contains("clusterCidrs[0]"), "{error}");
        assert!(error.contains("prefix length"), "{error}");
    }

    #[test]
    fn bad_protocol_and_action_are_rejected() {
        let error = parse("clusterDns:\n  ports: [{port: 53, protocol: ICMP}]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("clusterDns.ports[0].protocol"), "{error}");
        let error = parse("unknownEndpoints: maybe\n").unwrap_err().to_string();
        assert!(error.contains("unknownEndpoints"), "{error}");
    }

    #[test]
    fn tenant_sources_parse_and_tenant_label_still_works() {
        assert_eq!(parse("").unwrap().tenants(), TenantSource::Label("tenant".into()));
        assert_eq!(parse("tenantLabel: team\n").unwrap().tenants(), TenantSource::Label("team".into()));
        assert_eq!(parse("tenantSource: {label: org}\n").unwrap().tenants(), TenantSource::Label("org".into()));
        assert_eq!(parse("tenantSource: {capsule: {}}\n").unwrap().tenants(), TenantSource::Capsule {});
        assert_eq!(parse("tenantSource: {hnc: {}}\n").unwrap().tenants(), TenantSource::Hnc {});
        let both = parse("tenantLabel: a\ntenantSource: {hnc: {}}\n").unwrap_err().to_string();
        assert!(both.contains("not both"), "{both}");
        let unknown = parse("tenantSource: {ldap: {}}\n").unwrap_err().to_string();
        assert!(unknown.contains("tenantSource"), "{unknown}");
        assert!(parse("tenantSource: {label: \"\"}\n").is_err());
    }

    #[test]
    fn kubelet_layout_parses_and_root_may_be_unset() {
        let config = parse("cgroupLayout: kubelet\n").unwrap();
        assert_eq!(config.cgroup_layout, CgroupLayoutKind::Kubelet);
        assert_eq!(config.cgroup_root, None);
    }

    #[test]
    fn full_config_parses() {
        let config = parse(
            "tenantLabel: team\nunknownEndpoints: deny\nsharedServices:\n- name: metrics\n  namespace: monitoring\n  ports: [{port: 9090}]\nallowedTenantPairs: [{from: a, to: b}]\ntenantNetworks: [{cidr: 192.0.2.0/24, tenant: acme}]\n",
        )
        .unwrap();
        assert_eq!(config.tenants(), TenantSource::Label("team".into()));
        assert_eq!(config.unknown_endpoints, Action::Deny);
        assert_eq!(config.shared_services[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(config.tenant_networks[0].cidr.prefix_len, 24);
    }

    #[test]
    fn observability_defaults_and_fields() {
        let config = Config::default();
        assert_eq!(config.metrics_address, "0.0.0.0:9476");
        assert_eq!(config.admin_socket_path(), PathBuf::from("/run/moat/default/admin.sock"));
        assert_eq!(config.events.aggregation_window_ms, 1000);
        let config = parse(
            "metricsAddress: 127.0.0.1:0\nadminSocket: /tmp/a.sock\nevents:\n  aggregationWindowMs: 500\n  file: {path: /var/log/moat.json}\nkubeEvents: {enabled: true, apiServer: http://127.0.0.1:1}\n",
        )
        .unwrap();
        assert_eq!(config.admin_socket_path(), PathBuf::from("/tmp/a.sock"));
        let file = config.events.file.unwrap();
        assert_eq!((file.max_size_bytes, file.files_kept), (10 << 20, 5));
        assert!(config.kube_events.enabled);
        let error = parse("metricsAddress: nowhere\n").unwrap_err().to_string();
        assert!(error.contains("metricsAddress"), "{error}");
        let error = parse("events: {file: {path: /x, filesKept: 0}}\n").unwrap_err().to_string();
        assert!(error.contains("events.file.filesKept"), "{error}");
        let error = parse("events: {bufer: 3}\n").unwrap_err().to_string();
        assert!(error.contains("bufer"), "{error}");
    }

    #[test]
    fn dns_isolation_defaults_to_block_and_bad_values_are_named() {
        let config = Config::default();
        assert_eq!(config.dns.isolation, DnsIsolation::Block);
        assert_eq!(config.dns.zones, ["cluster.local"]);
        let config = parse("dns: {isolation: detect, zones: [cluster.local, corp.example], sharedNamespaces: [tools]}\n").unwrap();
        assert_eq!(config.dns.isolation, DnsIsolation::Detect);
        assert_eq!(config.dns.shared_namespaces, ["tools"]);
        for (text, field) in [
            ("dns: {isolation: maybe}\n", "dns.isolation"),
            ("dns: {zones: [\"cluster..local\"]}\n", "dns.zones[0]"),
            ("dns: {zones: [\"cluster.local.\"]}\n", "dns.zones[0]"),
            ("dns: {zones: [a, b, c, d, e]}\n", "dns.zones"),
            ("dns: {sharedNamespaces: [\"\"]}\n", "dns.sharedNamespaces[0]"),
            ("dns: {zone: [a]}\n", "zone"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(field), "{text}: {error}");
        }
    }
}
