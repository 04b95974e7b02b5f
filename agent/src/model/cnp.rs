//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy in the form moat evaluates, parsed
//! strictly: an unknown field, a missing one, or a value the API's own validation would refuse
//! is an error naming the field, never a rule silently read as something else. Peers moat
//! cannot evaluate (`domainNames`) are errors too, not "matches nothing".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use super::cidr::Cidr;
use super::objects::Protocol;
use super::selector;

/// The API group, version and kind moat enforces.
pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const KIND: &str = "ClusterNetworkPolicy";

/// The API's limits: rules per direction, peers and protocols per rule, CIDRs per peer.
pub const MAX_ITEMS: usize = 25;
pub const MAX_PRIORITY: u16 = 1000;
const MAX_RULE_NAME: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

/// Pods in namespaces matching `namespaces` whose labels match `pods` (None: every pod).
#[derive(Clone, Debug, PartialEq)]
pub struct PodSet {
    pub namespaces: LabelSelector,
    pub pods: Option<LabelSelector>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    Pods(PodSet),
    /// Node addresses of Nodes matching the selector (egress only).
    Nodes(LabelSelector),
    /// Addresses in any of these CIDRs, pods' included (egress only).
    Networks(Vec<Cidr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// `start..=end` of one protocol (a number is a range of one).
    Ports { protocol: Protocol, start: u16, end: u16 },
    /// A container port name, resolved on the destination pod (its protocol included).
    Named(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<Peer>,
    /// None: every protocol and port.
    pub ports: Option<Vec<PortMatch>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: PodSet,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// A field and what is wrong with it.
pub type FieldError = (String, String);

// The API's shapes, every field known (deny_unknown_fields): an alpha API adds fields whose
// meaning moat would otherwise silently ignore.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiSpec {
    tier: String,
    priority: i64,
    subject: ApiSubject,
    #[serde(default)]
    ingress: Option<Vec<ApiRule>>,
    #[serde(default)]
    egress: Option<Vec<ApiRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiSubject {
    namespaces: Option<LabelSelector>,
    pods: Option<ApiNamespacedPod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiNamespacedPod {
    #[serde(default)]
    namespace_selector: LabelSelector,
    pod_selector: LabelSelector,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiRule {
    #[serde(default)]
    name: String,
    action: String,
    from: Option<Vec<ApiPeer>>,
    to: Option<Vec<ApiPeer>>,
    protocols: Option<Vec<ApiProtocol>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiPeer {
    namespaces: Option<LabelSelector>,
    pods: Option<ApiNamespacedPod>,
    nodes: Option<LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiProtocol {
    tcp: Option<ApiProtocolPorts>,
    udp: Option<ApiProtocolPorts>,
    sctp: Option<ApiProtocolPorts>,
    destination_named_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiProtocolPorts {
    destination_port: Option<ApiPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiPort {
    number: Option<i64>,
    range: Option<ApiRange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiRange {
    start: i64,
    end: i64,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err((field.into(), message.into()))
}

impl ClusterNetworkPolicy {
    /// Parses and validates `spec` of the object named `name`. Errors name the field from
    /// `spec` on (`spec.ingress[0].from[1].networks[0]`).
    pub fn parse(name: &str, spec: Option<&serde_json::Value>) -> Result<Self, FieldError> {
        let Some(spec) = spec else { return err("spec", "missing") };
        let spec: ApiSpec = serde_path_to_error::deserialize(spec).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
            (field, error.into_inner().to_string())
        })?;
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => return err("spec.tier", format!("{other:?} is not Admin or Baseline")),
        };
        let priority = u16::try_from(spec.priority).ok().filter(|p| *p <= MAX_PRIORITY);
        let Some(priority) = priority else { return err("spec.priority", format!("{} is not in 0..=1000", spec.priority)) };
        let subject = match (spec.subject.namespaces, spec.subject.pods) {
            (Some(namespaces), None) => PodSet { namespaces: checked(namespaces, "spec.subject.namespaces")?, pods: None },
            (None, Some(pods)) => pod_set(pods, "spec.subject.pods")?,
            _ => return err("spec.subject", "exactly one of namespaces or pods must be set"),
        };
        Ok(Self {
            name: name.to_string(),
            tier,
            priority,
            subject,
            ingress: rules(spec.ingress, "ingress")?,
            egress: rules(spec.egress, "egress")?,
        })
    }
}

fn checked(selector: LabelSelector, field: &str) -> Result<LabelSelector, FieldError> {
    selector::validate(&selector).map_err(|e| (field.to_string(), e.to_string()))?;
    Ok(selector)
}

fn pod_set(pods: ApiNamespacedPod, field: &str) -> Result<PodSet, FieldError> {
    Ok(PodSet {
        namespaces: checked(pods.namespace_selector, &format!("{field}.namespaceSelector"))?,
        pods: Some(checked(pods.pod_selector, &format!("{field}.podSelector"))?),
    })
}

fn rules(rules: Option<Vec<ApiRule>>, direction: &str) -> Result<Vec<Rule>, FieldError> {
    let rules = rules.unwrap_or_default();
    if rules.len() > MAX_ITEMS {
        return err(format!("spec.{direction}"), format!("{} rules; at most {MAX_ITEMS}", rules.len()));
    }
    let (list, other) = if direction == "ingress" { ("from", "to") } else { ("to", "from") };
    rules
        .into_iter()
        .enumerate()
        .map(|(index, rule)| {
            let field = format!("spec.{direction}[{index}]");
            if rule.name.len() > MAX_RULE_NAME {
                return err(format!("{field}.name"), format!("longer than {MAX_RULE_NAME} characters"));
            }
            let action = match rule.action.as_str() {
                "Accept" => Action::Accept,
                "Deny" => Action::Deny,
                "Pass" => Action::Pass,
                other => return err(format!("{field}.action"), format!("{other:?} is not Accept, Deny or Pass")),
            };
            let (peers, wrong) = if direction == "ingress" { (rule.from, rule.to) } else { (rule.to, rule.from) };
            if wrong.is_some() {
                return err(format!("{field}.{other}"), format!("not a field of {direction} rules (use {list})"));
            }
            let peers = match peers {
                Some(peers) if (1..=MAX_ITEMS).contains(&peers.len()) => peers,
                Some(peers) => return err(format!("{field}.{list}"), format!("{} peers; 1 to {MAX_ITEMS} required", peers.len())),
                None => return err(format!("{field}.{list}"), "missing (at least one peer is required)"),
            };
            let peers = peers
                .into_iter()
                .enumerate()
                .map(|(i, peer)| convert_peer(peer, &format!("{field}.{list}[{i}]"), direction == "egress"))
                .collect::<Result<Vec<_>, _>>()?;
            let ports = rule.protocols.map(|protocols| convert_protocols(protocols, &format!("{field}.protocols"))).transpose()?;
            let named = ports.iter().flatten().any(|p| matches!(p, PortMatch::Named(_)));
            if named && peers.iter().any(|p| !matches!(p, Peer::Pods(_))) {
                return err(format!("{field}.protocols"), "destinationNamedPort cannot be used with networks or nodes peers (they have no named ports)");
            }
            Ok(Rule { name: (!rule.name.is_empty()).then_some(rule.name), action, peers, ports })
        })
        .collect()
}

fn convert_peer(peer: ApiPeer, field: &str, egress: bool) -> Result<Peer, FieldError> {
    let set = [peer.namespaces.is_some(), peer.pods.is_some(), peer.nodes.is_some(), peer.networks.is_some(), peer.domain_names.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        return err(field, "exactly one of namespaces, pods, nodes, networks or domainNames must be set");
    }
    if !egress && (peer.nodes.is_some() || peer.networks.is_some() || peer.domain_names.is_some()) {
        return err(field, "ingress peers are namespaces or pods only");
    }
    if peer.domain_names.is_some() {
        return err(format!("{field}.domainNames"), "not supported by moat (an experimental field; refused rather than read as matching nothing)");
    }
    if let Some(namespaces) = peer.namespaces {
        return Ok(Peer::Pods(PodSet { namespaces: checked(namespaces, &format!("{field}.namespaces"))?, pods: None }));
    }
    if let Some(pods) = peer.pods {
        return Ok(Peer::Pods(pod_set(pods, &format!("{field}.pods"))?));
    }
    if let Some(nodes) = peer.nodes {
        return Ok(Peer::Nodes(checked(nodes, &format!("{field}.nodes"))?));
    }
    let networks = peer.networks.unwrap_or_default();
    if !(1..=MAX_ITEMS).contains(&networks.len()) {
        return err(format!("{field}.networks"), format!("{} CIDRs; 1 to {MAX_ITEMS} required", networks.len()));
    }
    let cidrs = networks
        .iter()
        .enumerate()
        .map(|(i, text)| text.parse::<Cidr>().map_err(|m| (format!("{field}.networks[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Peer::Networks(cidrs))
}

fn convert_protocols(protocols: Vec<ApiProtocol>, field: &str) -> Result<Vec<PortMatch>, FieldError> {
    if !(1..=MAX_ITEMS).contains(&protocols.len()) {
        return err(field, format!("{} entries; 1 to {MAX_ITEMS} required", protocols.len()));
    }
    protocols
        .into_iter()
        .enumerate()
        .map(|(i, protocol)| {
            let field = format!("{field}[{i}]");
            let one = |name: &str, ports: ApiProtocolPorts, protocol: Protocol| port_match(ports, protocol, &format!("{field}.{name}"));
            match protocol {
                ApiProtocol { tcp: Some(p), udp: None, sctp: None, destination_named_port: None } => one("tcp", p, Protocol::Tcp),
                ApiProtocol { tcp: None, udp: Some(p), sctp: None, destination_named_port: None } => one("udp", p, Protocol::Udp),
                ApiProtocol { tcp: None, udp: None, sctp: Some(p), destination_named_port: None } => one("sctp", p, Protocol::Sctp),
                ApiProtocol { tcp: None, udp: None, sctp: None, destination_named_port: Some(name) } if !name.is_empty() => Ok(PortMatch::Named(name)),
                _ => err(field, "exactly one of tcp, udp, sctp or destinationNamedPort must be set"),
            }
        })
        .collect()
}

fn port_match(ports: ApiProtocolPorts, protocol: Protocol, field: &str) -> Result<PortMatch, FieldError> {
    let port = |value: i64, field: String| u16::try_from(value).ok().filter(|p| *p >= 1).ok_or((field, format!("{value} is not a port (1..=65535)")));
    let (start, end) = match ports.destination_port {
        None => return err(format!("{field}.destinationPort"), "missing"),
        Some(ApiPort { number: Some(number), range: None }) => {
            let number = port(number, format!("{field}.destinationPort.number"))?;
            (number, number)
        }
        Some(ApiPort { number: None, range: Some(range) }) => {
            let start = port(range.start, format!("{field}.destinationPort.range.start"))?;
            let end = port(range.end, format!("{field}.destinationPort.range.end"))?;
            if start >= end {
                return err(format!("{field}.destinationPort.range"), format!("start {start} must be less than end {end}"));
            }
            (start, end)
        }
        Some(_) => return err(format!("{field}.destinationPort"), "exactly one of number or range must be set"),
    };
    Ok(PortMatch::Ports { protocol, start, end })
}

#[cfg(test)]
#[path = "cnp_tests.rs"]
mod tests;
