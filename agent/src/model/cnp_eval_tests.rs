//! The evaluation order on scenarios of the upstream conformance suite (network-policy-api:
//! priority field, Pass, rule order, ports), re-expressed over the model.

use std::collections::BTreeMap;

use super::*;
use crate::model::cnp::ClusterNetworkPolicy;
use crate::model::{ContainerPort, PodKey, Protocol};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn policies(yaml: &str) -> Vec<ClusterNetworkPolicy> {
    yaml.split("---\n")
        .map(|doc| {
            let value: serde_json::Value = serde_yaml::from_str(doc).expect("test YAML");
            let name = value["metadata"]["name"].as_str().expect("name");
            ClusterNetworkPolicy::parse(name, value.get("spec")).unwrap_or_else(|e| panic!("{name}: {e:?}"))
        })
        .collect()
}

fn pod(ns: &str, name: &str, ports: &[(&str, u16)]) -> Pod {
    Pod {
        key: PodKey::new(ns, name),
        uid: None,
        labels: [("house".to_string(), ns.to_string())].into(),
        ips: vec![],
        node_name: None,
        host_network: false,
        host_pid: false,
        ports: ports.iter().map(|(n, p)| ContainerPort { name: Some(n.to_string()), port: *p, protocol: Protocol::Tcp }).collect(),
    }
}

fn labels(ns: &str) -> Labels {
    [("house".to_string(), ns.to_string())].into()
}

struct Scenario {
    pods: BTreeMap<&'static str, (Pod, Labels, IpAddr)>,
}

impl Scenario {
    fn new() -> Self {
        let mut pods = BTreeMap::new();
        for (i, ns) in ["gryffindor", "slytherin", "ravenclaw", "hufflepuff"].into_iter().enumerate() {
            let ip: IpAddr = format!("10.0.0.{}", i + 1).parse().unwrap();
            pods.insert(ns, (pod(ns, "p", &[("web", 80)]), labels(ns), ip));
        }
        Self { pods }
    }

    fn end(&self, ns: &str) -> End<'_> {
        let (pod, labels, ip) = &self.pods[ns];
        End { pod, namespace_labels: labels, ip: *ip, node: None }
    }

    /// Ingress at `to` from `from`, and egress at `from` to `to`.
    fn both(&self, cnps: &[ClusterNetworkPolicy], from: &str, to: &str, protocol: u8, port: u16) -> (Decision, Decision) {
        let np = NetworkPolicyTier::NotSelected;
        (
            decide(cnps, Direction::Ingress, self.end(to), self.end(from), protocol, port, np),
            decide(cnps, Direction::Egress, self.end(from), self.end(to), protocol, port, np),
        )
    }
}

fn rule(decision: &Decision) -> String {
    match &decision.decider {
        Decider::Rule(rule) => rule.to_string(),
        other => format!("{other:?}"),
    }
}

fn selector_yaml(house: &str) -> String {
    format!("{{namespaceSelector: {{matchLabels: {{house: {house}}}}}, podSelector: {{matchLabels: {{house: {house}}}}}}}")
}

/// Three policies on gryffindor as in the suite's priority test: Admin priority 50 denies
/// slytherin both ways, Admin priority 60 passes it, Baseline accepts it.
fn priority_policies(pass_priority: u16) -> Vec<ClusterNetworkPolicy> {
    let (g, s) = (selector_yaml("gryffindor"), selector_yaml("slytherin"));
    let one = |name: &str, tier: &str, priority: u16, action: &str| {
        format!(
            "metadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{pods: {g}}}\n  ingress: [{{name: {action}-in, action: {action}, from: [{{pods: {s}}}]}}]\n  egress: [{{name: {action}-out, action: {action}, to: [{{pods: {s}}}]}}]\n"
        )
    };
    policies(&[one("deny-50", "Admin", 50, "Deny"), one("pass", "Admin", pass_priority, "Pass"), one("baseline", "Baseline", 10, "Accept")].join("---\n"))
}

#[test]
fn priority_decides_between_admin_policies_and_pass_goes_to_baseline() {
    let scenario = Scenario::new();
    let cnps = priority_policies(60);
    let (ingress, _) = scenario.both(&cnps, "slytherin", "gryffindor", TCP, 80);
    assert!(!ingress.allowed);
    assert_eq!(rule(&ingress), "Admin tier, ClusterNetworkPolicy deny-50 (priority 50), rule 0 \"Deny-in\": Deny");
    let (_, egress) = scenario.both(&cnps, "gryffindor", "slytherin", TCP, 8080);
    assert!(!egress.allowed, "{egress:?}");

    // The pass policy moved to priority 40: it now comes first and hands over to Baseline.
    let cnps = priority_policies(40);
    for (from, to) in [("slytherin", "gryffindor"), ("gryffindor", "slytherin")] {
        let (ingress, egress) = scenario.both(&cnps, from, to, TCP, 80);
        let at_gryffindor = if to == "gryffindor" { ingress } else { egress };
        assert!(at_gryffindor.allowed, "{at_gryffindor:?}");
        assert_eq!(at_gryffindor.passed.len(), 1);
        assert!(rule(&at_gryffindor).starts_with("Baseline tier, ClusterNetworkPolicy baseline (priority 10), rule 0"), "{at_gryffindor:?}");
    }
    // Other houses are not peers of any rule: the default allows.
    let (ingress, _) = scenario.both(&cnps, "ravenclaw", "gryffindor", TCP, 80);
    assert_eq!((ingress.allowed, ingress.decider), (true, Decider::Default));
}

#[test]
fn rule_order_ports_and_the_network_policy_tier() {
    let scenario = Scenario::new();
    let cnps = policies(
        "metadata: {name: ingress-tcp}\nspec:\n  tier: Admin\n  priority: 3\n  subject: {namespaces: {matchLabels: {house: gryffindor}}}\n  ingress:\n\
         \x20\x20- {name: accept-ravenclaw, action: Accept, from: [{namespaces: {matchLabels: {house: ravenclaw}}}]}\n\
         \x20\x20- {name: deny-ravenclaw, action: Deny, from: [{namespaces: {matchLabels: {house: ravenclaw}}}]}\n\
         \x20\x20- {name: deny-slytherin-80, action: Deny, from: [{namespaces: {matchLabels: {house: slytherin}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}\n\
         \x20\x20- {name: accept-hufflepuff-web, action: Accept, from: [{namespaces: {matchLabels: {house: hufflepuff}}}], protocols: [{destinationNamedPort: web}]}\n\
         \x20\x20- {name: deny-hufflepuff, action: Deny, from: [{namespaces: {matchLabels: {house: hufflepuff}}}]}\n\
         \x20\x20- {name: pass-slytherin-udp, action: Pass, from: [{namespaces: {matchLabels: {house: slytherin}}}], protocols: [{udp: {destinationPort: {range: {start: 50, end: 60}}}}]}\n",
    );
    let at = |from: &str, protocol: u8, port: u16, np: NetworkPolicyTier| {
        decide(&cnps, Direction::Ingress, scenario.end("gryffindor"), scenario.end(from), protocol, port, np)
    };
    let np = NetworkPolicyTier::NotSelected;
    // The first matching rule wins: Accept above Deny.
    assert!(at("ravenclaw", TCP, 9, np).allowed);
    assert!(rule(&at("ravenclaw", TCP, 9, np)).contains("rule 0 \"accept-ravenclaw\""));
    // Port 80 from slytherin is denied; other ports fall through to the default.
    assert!(!at("slytherin", TCP, 80, np).allowed);
    assert_eq!(at("slytherin", TCP, 81, np).decider, Decider::Default);
    // A named port resolves on the destination pod (web = 80/TCP); 81 is not it.
    assert!(at("hufflepuff", TCP, 80, np).allowed);
    assert!(!at("hufflepuff", TCP, 81, np).allowed);
    assert!(!at("hufflepuff", UDP, 80, np).allowed, "the named port is TCP");
    // Pass hands the flow to the NetworkPolicy tier, which then decides.
    let passed = at("slytherin", UDP, 55, NetworkPolicyTier::Denied);
    assert_eq!((passed.allowed, &passed.decider, passed.passed.len()), (false, &Decider::NetworkPolicy, 1));
    assert!(at("slytherin", UDP, 55, NetworkPolicyTier::Allowed).allowed);
    // An Admin Deny is final whatever NetworkPolicies say.
    assert!(!at("slytherin", TCP, 80, NetworkPolicyTier::Allowed).allowed);
    // The subject is gryffindor only: ravenclaw's own ingress is not affected.
    let other = decide(&cnps, Direction::Ingress, scenario.end("ravenclaw"), scenario.end("gryffindor"), TCP, 80, np);
    assert_eq!(other.decider, Decider::Default);
}

#[test]
fn networks_match_addresses_and_host_network_pods_are_never_subjects() {
    let mut scenario = Scenario::new();
    let cnps = policies(
        "metadata: {name: egress-cidr}\nspec:\n  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n\
         \x20\x20- {name: deny-10-0-0-2, action: Deny, to: [{networks: [10.0.0.2/32, 'fd00::/8']}]}\n\
         \x20\x20- {name: nodes, action: Deny, to: [{nodes: {}}]}\n",
    );
    let egress = |scenario: &Scenario, to: &str| decide(&cnps, Direction::Egress, scenario.end("gryffindor"), scenario.end(to), TCP, 80, NetworkPolicyTier::NotSelected);
    assert!(!egress(&scenario, "slytherin").allowed, "10.0.0.2 is slytherin's address");
    assert!(egress(&scenario, "ravenclaw").allowed, "10.0.0.3 is not in the network, and pods are not nodes");
    // A NetworkPolicy selecting the pod overrides the Baseline tier.
    let np = decide(&cnps, Direction::Egress, scenario.end("gryffindor"), scenario.end("slytherin"), TCP, 80, NetworkPolicyTier::Allowed);
    assert_eq!((np.allowed, np.decider), (true, Decider::NetworkPolicy));
    scenario.pods.get_mut("gryffindor").unwrap().0.host_network = true;
    assert!(egress(&scenario, "slytherin").allowed, "hostNetwork pods are not subjects");
}

#[test]
fn nodes_peers_match_the_addresses_of_the_nodes_they_select() {
    let scenario = Scenario::new();
    let cnps = policies(
        "metadata: {name: egress-nodes}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n\
         \x20\x20- {name: infra-nodes, action: Deny, to: [{nodes: {matchLabels: {role: infra}}}], protocols: [{tcp: {destinationPort: {number: 10250}}}]}\n",
    );
    // A node end: its address, and the labels of the Node holding it (a hostNetwork pod there
    // has the same end).
    let mut host = pod("kube-system", "host", &[]);
    host.host_network = true;
    let none = Labels::new();
    let infra: Labels = [("role".to_string(), "infra".to_string())].into();
    let worker: Labels = [("role".to_string(), "worker".to_string())].into();
    let to_node = |node: Option<&Labels>, port: u16| {
        let remote = End { pod: &host, namespace_labels: &none, ip: "192.0.2.1".parse().unwrap(), node };
        decide(&cnps, Direction::Egress, scenario.end("gryffindor"), remote, TCP, port, NetworkPolicyTier::NotSelected)
    };
    let denied = to_node(Some(&infra), 10250);
    assert!(!denied.allowed);
    assert_eq!(rule(&denied), "Admin tier, ClusterNetworkPolicy egress-nodes (priority 1), rule 0 \"infra-nodes\": Deny");
    assert!(to_node(Some(&infra), 443).allowed, "another port");
    assert!(to_node(Some(&worker), 10250).allowed, "a Node the selector does not select");
    assert!(to_node(None, 10250).allowed, "an address no Node has");
    // Ingress rules cannot name nodes (the parser refuses them), and a pod is never a node.
    assert!(decide(&cnps, Direction::Egress, scenario.end("gryffindor"), scenario.end("slytherin"), TCP, 10250, NetworkPolicyTier::NotSelected).allowed);
}
