//! The compiled tier sets and entries, looked up as the kernel does (longest prefix, three
//! identities, `verdict::first_cluster_rules`), must decide every flow as the specification
//! (`model::cnp_eval::decide`) does: on random clusters and policies, for every pair of pods,
//! both directions and a spread of protocols and ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use moat_common::maps::{Endpoint, TierMatch, NOT_ISOLATED, TIER_ACCEPT, TIER_DENY, TIER_PASS};
use moat_common::verdict::{first_cluster_rules, Peer as DataPeer};

use super::*;
use crate::test_rng::Rng;
use crate::compiler::Desired;
use crate::model::cnp_eval::{self, Decider, End, NetworkPolicyTier};
use crate::model::{ContainerPort, Namespace, Pod};

const HOUSES: [&str; 3] = ["red", "green", "blue"];
const APPS: [&str; 3] = ["web", "db", "cache"];

fn cluster(rng: &mut Rng) -> Cluster {
    let mut cluster = Cluster::default();
    for n in 0..4 {
        let name = format!("ns{n}");
        let labels = [("house".to_string(), rng.pick(&HOUSES).to_string())].into();
        cluster.namespaces.insert(name.clone(), Namespace { name, labels });
    }
    for p in 0..10 {
        let namespace = format!("ns{}", rng.below(4));
        let key = PodKey::new(&namespace, format!("p{p}"));
        let mut ports = Vec::new();
        if rng.below(2) == 0 {
            ports.push(ContainerPort { name: Some("http".into()), port: *rng.pick(&[80, 8080]), protocol: Protocol::Tcp });
        }
        if rng.below(3) == 0 {
            ports.push(ContainerPort { name: Some("dns".into()), port: 53, protocol: Protocol::Udp });
        }
        let ip: IpAddr = format!("10.0.{}.{}", rng.below(2), p + 1).parse().expect("test address");
        let pod = Pod {
            key: key.clone(),
            uid: None,
            labels: [("app".to_string(), rng.pick(&APPS).to_string())].into(),
            ips: vec![ip],
            node_name: None,
            host_network: false,
            host_pid: false,
            ports: ports.into(),
        };
        cluster.pods.insert(key, pod);
    }
    // Nodes: some addresses inside a `networks` range, one sometimes in none of them.
    for n in 0..rng.below(4) {
        let labels = [("role".to_string(), rng.pick(&["infra", "worker"]).to_string())].into();
        let mut addresses: Vec<IpAddr> = vec![format!("192.0.2.{}", n + 1).parse().expect("test address")];
        if rng.below(2) == 0 {
            addresses.push(format!("10.0.{}.{}", rng.below(2), 200 + n).parse().expect("test address"));
        }
        cluster.nodes.insert(format!("node{n}"), crate::model::Node { labels, addresses });
    }
    cluster
}

fn pods_yaml(rng: &mut Rng) -> String {
    let house = *rng.pick(&HOUSES);
    if rng.below(2) == 0 {
        format!("{{namespaces: {{matchLabels: {{house: {house}}}}}}}")
    } else {
        let app = *rng.pick(&APPS);
        format!("{{pods: {{namespaceSelector: {{matchLabels: {{house: {house}}}}}, podSelector: {{matchLabels: {{app: {app}}}}}}}}}")
    }
}

fn rule_yaml(rng: &mut Rng, egress: bool, index: usize) -> String {
    let action = *rng.pick(&["Accept", "Deny", "Pass"]);
    let networks = egress && rng.below(3) == 0;
    let peers: Vec<String> = (0..=rng.below(2))
        .map(|_| {
            if networks && rng.below(2) == 0 {
                format!("{{nodes: {}}}", *rng.pick(&["{}", "{matchLabels: {role: infra}}", "{matchLabels: {role: none}}"]))
            } else if networks {
                format!("{{networks: [{}]}}", *rng.pick(&["10.0.0.0/16", "10.0.1.0/24", "10.0.0.5/32", "0.0.0.0/0"]))
            } else {
                pods_yaml(rng)
            }
        })
        .collect();
    let mut protocols = vec![
        "{tcp: {destinationPort: {number: 80}}}",
        "{tcp: {destinationPort: {range: {start: 70, end: 8080}}}}",
        "{udp: {destinationPort: {number: 53}}}",
        "{udp: {destinationPort: {range: {start: 1, end: 65535}}}}",
    ];
    if !networks {
        protocols.extend(["{destinationNamedPort: http}", "{destinationNamedPort: dns}"]);
    }
    let ports = match rng.below(3) {
        0 => String::new(),
        _ => format!(", protocols: [{}, {}]", *rng.pick(&protocols), *rng.pick(&protocols)),
    };
    let list = if egress { "to" } else { "from" };
    format!("{{name: r{index}, action: {action}, {list}: [{}]{ports}}}", peers.join(", "))
}

fn policies(rng: &mut Rng) -> Vec<ClusterNetworkPolicy> {
    (0..1 + rng.below(4))
        .map(|n| {
            let rules = |rng: &mut Rng, egress| (0..rng.below(4)).map(|i| rule_yaml(rng, egress, i)).collect::<Vec<_>>().join(", ");
            let (tier, priority, subject) = (*rng.pick(&["Admin", "Baseline"]), rng.below(3), pods_yaml(rng));
            let (ingress, egress) = (rules(rng, false), rules(rng, true));
            let yaml = format!("{{tier: {tier}, priority: {priority}, subject: {subject}, ingress: [{ingress}], egress: [{egress}]}}");
            let spec: serde_json::Value = serde_yaml::from_str(&yaml).expect("test YAML");
            ClusterNetworkPolicy::parse(&format!("c{n}"), Some(&spec)).unwrap_or_else(|e| panic!("{yaml}: {e:?}"))
        })
        .collect()
}

/// What the compiled form decides, as the kernel would, in the specification's terms.
fn compiled_decision(
    compiled: &Compiled,
    kernel: &Desired,
    set: u64,
    remote: DataPeer,
    protocol: u8,
    port: u16,
    network_policy: NetworkPolicyTier,
) -> (bool, Decider, Vec<RuleRef>) {
    let tiers = if set == NOT_ISOLATED {
        TierMatch::NONE
    } else {
        first_cluster_rules(set, &remote, protocol, port, kernel)
    };
    let rule_at = |encoded| compiled.sets[&set].rules[TierMatch::position(encoded) as usize].clone();
    let mut passed = Vec::new();
    for (tier, encoded) in [(Tier::Admin, tiers.admin), (Tier::Baseline, tiers.baseline)] {
        match TierMatch::action(encoded) {
            TIER_ACCEPT => return (true, Decider::Rule(rule_at(encoded)), passed),
            TIER_DENY => return (false, Decider::Rule(rule_at(encoded)), passed),
            TIER_PASS => passed.push(rule_at(encoded)),
            _ => {}
        }
        if tier == Tier::Admin {
            match network_policy {
                NetworkPolicyTier::Allowed => return (true, Decider::NetworkPolicy, passed),
                NetworkPolicyTier::Denied => return (false, Decider::NetworkPolicy, passed),
                NetworkPolicyTier::NotSelected => {}
            }
        }
    }
    (true, Decider::Default, passed)
}

fn check(seed: u64) {
    let mut rng = Rng::seeded(seed);
    let cluster = cluster(&mut rng);
    let cnps = policies(&mut rng);
    let refs: Vec<&ClusterNetworkPolicy> = cnps.iter().collect();
    let blocks = crate::compiler::policy::compile(&cluster, &networks(&refs, &cluster.nodes)).blocks;
    let compiled = compile(&cluster, &refs, &blocks).expect("valid policies compile");
    // `Desired` looks its entries up as `CNP_RULES` does (longest prefix).
    let kernel = Desired { cluster_rules: compiled.rules.clone(), ..Desired::default() };
    let identities = crate::compiler::policy::compile(&cluster, &[]).pod_identity;
    let range_of = |ip: IpAddr| {
        let host = targets::host_key(ip);
        let covering = blocks.iter().filter(|(range, _)| crate::compiler::policy::contains(range, &host));
        covering.max_by_key(|(range, _)| range.prefix_len).map_or(0, |(_, id)| *id)
    };
    let namespace_labels: BTreeMap<&str, Labels> = cluster
        .namespaces
        .iter()
        .map(|(name, ns)| (name.as_str(), namespace_labels(Some(&ns.labels), name)))
        .collect();
    fn end<'a>(labels: &'a BTreeMap<&str, Labels>, pod: &'a Pod) -> End<'a> {
        End { pod, namespace_labels: &labels[&*pod.key.namespace], ip: pod.ips[0], node: None }
    }
    let flows: [(u8, u16); 6] = [(6, 80), (6, 8080), (6, 70), (6, 9000), (17, 53), (17, 80)];
    let np_tiers = [NetworkPolicyTier::NotSelected, NetworkPolicyTier::Allowed, NetworkPolicyTier::Denied];
    // Every pod, and every Node address (as the kernel sees it: no pod there, only its range).
    let no_labels = Labels::new();
    let host = Pod {
        key: PodKey::new("kube-system", "host"),
        uid: None,
        labels: Labels::new(),
        ips: Vec::new(),
        node_name: None,
        host_network: true,
        host_pid: false,
        ports: Vec::new().into(),
    };
    let mut remotes: Vec<(End<'_>, DataPeer)> = cluster
        .pods
        .values()
        .map(|remote| {
            let data = DataPeer {
                cidr_identity: range_of(remote.ips[0]),
                ..DataPeer::known(Endpoint { tenant: 1, identity: identities[&remote.key], ..Endpoint::EMPTY })
            };
            (end(&namespace_labels, remote), data)
        })
        .collect();
    for node in cluster.nodes.values() {
        for ip in &node.addresses {
            let remote = End { pod: &host, namespace_labels: &no_labels, ip: *ip, node: Some(&node.labels) };
            remotes.push((remote, DataPeer { cidr_identity: range_of(*ip), ..DataPeer::UNKNOWN }));
        }
    }
    for local in cluster.pods.values() {
        for (remote, data_peer) in &remotes {
            let data_peer = *data_peer;
            for direction in [Direction::Ingress, Direction::Egress] {
                let sets = compiled.pod_sets.get(&local.key).copied().unwrap_or_default();
                let set = if direction == Direction::Ingress { sets.ingress } else { sets.egress };
                for (protocol, port) in flows {
                    let np = np_tiers[rng.below(3)];
                    let spec = cnp_eval::decide(&cnps, direction, end(&namespace_labels, local), *remote, protocol, port, np);
                    let got = compiled_decision(&compiled, &kernel, set, data_peer, protocol, port, np);
                    assert_eq!(
                        got,
                        (spec.allowed, spec.decider.clone(), spec.passed.clone()),
                        "seed {seed}: {direction:?} at {} with {}, {protocol}/{port}, {np:?}\npolicies: {cnps:#?}",
                        local.key,
                        remote.ip
                    );
                }
            }
        }
    }
}

#[test]
fn compiled_tiers_decide_as_the_specification() {
    for seed in 0..300 {
        check(seed);
    }
}

#[test]
fn no_policy_costs_nothing() {
    let mut rng = Rng(7);
    let cluster = cluster(&mut rng);
    assert_eq!(compile(&cluster, &[], &BTreeMap::new()), Ok(Compiled::default()));
}
