//! NetworkPolicy in the form the compiler needs, with the API server's defaulting applied:
//! `policyTypes` filled in, absent versus empty lists kept apart, ports typed.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::Selector;
use super::cidr::Cidr;
use super::objects::{ObjectKey, Protocol};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub key: ObjectKey,
    pub pod_selector: Selector,
    /// `None`: the policy does not affect ingress. `Some(rules)`: it isolates the selected
    /// pods for ingress and allows what `rules` allow (nothing, if empty).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `None`: every peer, pods or not (the rule had no `from`/`to`, or an empty one).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortRule>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces`; a missing namespace selector
    /// means the policy's own namespace, a missing pod selector every pod.
    Pods { namespaces: Option<Selector>, pods: Option<Selector> },
    Block { cidr: Cidr, except: Vec<Cidr> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// Every port of the protocol.
    Any,
    /// `port..=end`.
    Range(u16, u16),
    /// A named container port, resolved on the destination pod.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortRef,
}

/// A rule as the API has it: its peers (`from`/`to`) and ports.
type ApiRule = (Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("NetworkPolicy {policy}: {field}: {message}")]
pub struct PolicyError {
    pub policy: ObjectKey,
    pub field: String,
    pub message: String,
}

impl Policy {
    /// Normalizes a policy the manifests source has already validated; anything it let
    /// through that still does not make sense is an error, never silently dropped.
    pub fn from_api(key: &ObjectKey, policy: &NetworkPolicy) -> Result<Self, PolicyError> {
        let error = |field: String, message: String| PolicyError { policy: key.clone(), field, message };
        let spec = policy.spec.clone().unwrap_or_default();
        let types = match &spec.policy_types {
            Some(types) if !types.is_empty() => types.clone(),
            // The API server's defaulting: Ingress always, Egress when egress rules exist.
            _ => {
                let mut types = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()) {
                    types.push("Egress".into());
                }
                types
            }
        };
        // Sized vectors throughout: a pushed-to vector keeps room for four, and at 20,000
        // policies that slack was 24 MB of the agent's heap.
        let convert = |rules: &Option<Vec<ApiRule>>, field: &str| -> Result<Vec<Rule>, PolicyError> {
            let mut out = Vec::with_capacity(rules.as_ref().map_or(0, Vec::len));
            let list = if field == "ingress" { "from" } else { "to" };
            for (index, (peers, ports)) in rules.iter().flatten().enumerate() {
                let field = format!("spec.{field}[{index}]");
                out.push(Rule {
                    peers: convert_peers(peers.as_deref(), list).map_err(|(f, m)| error(format!("{field}.{f}"), m))?,
                    ports: convert_ports(ports.as_deref()).map_err(|(f, m)| error(format!("{field}.{f}"), m))?,
                });
            }
            Ok(out)
        };
        let ingress_rules = spec.ingress.map(|rules| rules.into_iter().map(|r| (r.from, r.ports)).collect());
        let egress_rules = spec.egress.map(|rules| rules.into_iter().map(|r| (r.to, r.ports)).collect());
        let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector").map_err(|(f, m)| error(f, m))?;
        Ok(Self {
            key: key.clone(),
            pod_selector,
            ingress: if types.iter().any(|t| t == "Ingress") { Some(convert(&ingress_rules, "ingress")?) } else { None },
            egress: if types.iter().any(|t| t == "Egress") { Some(convert(&egress_rules, "egress")?) } else { None },
        })
    }
}

fn convert_peers(peers: Option<&[NetworkPolicyPeer]>, list: &str) -> Result<Option<Vec<Peer>>, (String, String)> {
    let Some(peers) = peers.filter(|peers| !peers.is_empty()) else { return Ok(None) };
    let mut out = Vec::with_capacity(peers.len());
    for (index, peer) in peers.iter().enumerate() {
        if let Some(block) = &peer.ip_block {
            let field = format!("{list}[{index}].ipBlock");
            let cidr: Cidr = block.cidr.parse().map_err(|m| (format!("{field}.cidr"), m))?;
            let except = block
                .except
                .iter()
                .flatten()
                .map(|text| text.parse::<Cidr>().map_err(|m| (format!("{field}.except"), m)))
                .collect::<Result<_, _>>()?;
            out.push(Peer::Block { cidr, except });
        } else {
            let field = format!("{list}[{index}]");
            let optional = |api: Option<&LabelSelector>, name: &str| api.map(|api| selector(Some(api), &format!("{field}.{name}"))).transpose();
            out.push(Peer::Pods {
                namespaces: optional(peer.namespace_selector.as_ref(), "namespaceSelector")?,
                pods: optional(peer.pod_selector.as_ref(), "podSelector")?,
            });
        }
    }
    Ok(Some(out))
}

/// An absent selector selects everything, as an empty one does.
fn selector(api: Option<&LabelSelector>, field: &str) -> Result<Selector, (String, String)> {
    match api {
        None => Ok(Selector::default()),
        Some(api) => Selector::from_api(api).map_err(|error| (field.to_string(), error.to_string())),
    }
}

fn convert_ports(ports: Option<&[NetworkPolicyPort]>) -> Result<Option<Vec<PortRule>>, (String, String)> {
    let Some(ports) = ports.filter(|ports| !ports.is_empty()) else { return Ok(None) };
    let mut out = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let field = format!("ports[{index}]");
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::parse(text).ok_or_else(|| (format!("{field}.protocol"), format!("unknown protocol {text:?}")))?,
        };
        let port = match (&port.port, port.end_port) {
            (None, _) => PortRef::Any,
            (Some(IntOrString::Int(number)), end) => {
                let start = u16::try_from(*number).ok().filter(|p| *p > 0).ok_or_else(|| (format!("{field}.port"), format!("{number} is not a port")))?;
                let end = match end {
                    None => start,
                    Some(end) => u16::try_from(end).ok().filter(|e| *e >= start).ok_or_else(|| (format!("{field}.endPort"), format!("{end} is not a port at or above {start}")))?,
                };
                PortRef::Range(start, end)
            }
            (Some(IntOrString::String(name)), _) => match name.parse::<u16>() {
                Ok(number) if number > 0 => PortRef::Range(number, number),
                _ => PortRef::Named(name.clone()),
            },
        };
        out.push(PortRule { protocol, port });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let api: NetworkPolicy = serde_yaml::from_str(yaml).unwrap();
        Policy::from_api(&ObjectKey::new("x", "p"), &api).unwrap()
    }

    #[test]
    fn policy_types_default_like_the_api_server() {
        let p = policy("spec: {podSelector: {}}");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);
        let p = policy("spec: {podSelector: {}, egress: [{}]}");
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = policy("spec: {podSelector: {}, egress: []}");
        assert_eq!(p.egress, None);
        let p = policy("spec: {podSelector: {}, policyTypes: [Egress]}");
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
    }

    #[test]
    fn empty_and_absent_peers_and_ports_mean_everything() {
        let p = policy("spec: {podSelector: {}, ingress: [{from: [], ports: []}, {}]}");
        let rules = p.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.peers.is_none() && r.ports.is_none()));
    }

    #[test]
    fn errors_name_from_for_ingress_and_to_for_egress() {
        let api: NetworkPolicy = serde_yaml::from_str("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}").unwrap();
        let error = Policy::from_api(&ObjectKey::new("x", "p"), &api).unwrap_err();
        assert_eq!(error.field, "spec.ingress[0].from[0].ipBlock.cidr");
        let api: NetworkPolicy = serde_yaml::from_str("spec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}").unwrap();
        let error = Policy::from_api(&ObjectKey::new("x", "p"), &api).unwrap_err();
        assert_eq!(error.field, "spec.egress[0].to[0].ipBlock.cidr");
    }

    #[test]
    fn ports_are_typed() {
        let p = policy("spec: {podSelector: {}, ingress: [{ports: [{port: 80}, {protocol: UDP, port: 1000, endPort: 2000}, {port: http}, {protocol: SCTP}]}]}");
        let ports = p.ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(ports[0], PortRule { protocol: Protocol::Tcp, port: PortRef::Range(80, 80) });
        assert_eq!(ports[1], PortRule { protocol: Protocol::Udp, port: PortRef::Range(1000, 2000) });
        assert_eq!(ports[2].port, PortRef::Named("http".into()));
        assert_eq!(ports[3], PortRule { protocol: Protocol::Sctp, port: PortRef::Any });
    }
}
