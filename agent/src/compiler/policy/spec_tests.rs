//! Property test: explain's verdict (the kernel's decision function over the compiled
//! entries) equals a direct evaluation of the Kubernetes NetworkPolicy spec over the API
//! objects, for thousands of random clusters and policies. The evaluator below is written
//! from the API reference, shares no code with the compiler, and is deliberately naive.
//!
//! A failure prints the seed; rerun one with `MOAT_SPEC_SEED=<seed>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use crate::compiler::{compile_scoped, Scope};
use crate::config::Config;
use crate::explain::explain;
use crate::model::flow::{Family, Target};
use crate::model::{Cluster, ContainerPort, Labels, Namespace, ObjectKey, Pod, PodKey, Protocol};
use crate::node::cgroups::PodCgroups;
use crate::sources::convert;

/// splitmix64: small, seedable, good enough to pick from short lists.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TENANTS: [&str; 2] = ["t1", "t2"];
const LABEL_KEYS: [&str; 3] = ["app", "tier", "env"];
const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];
/// (port, protocol, candidate names).
const PORTS: [(u16, Protocol, &[&str]); 4] = [
    (80, Protocol::Tcp, &["http", "web"]),
    (81, Protocol::Tcp, &["web", "alt"]),
    (80, Protocol::Udp, &["http", "dns"]),
    (81, Protocol::Udp, &["alt", "dns"]),
];

fn random_labels(rng: &mut Rng) -> Labels {
    let mut labels = Labels::new();
    for key in LABEL_KEYS {
        if rng.chance(50) {
            let value = *rng.pick(&LABEL_VALUES);
            labels.insert(key, value);
        }
    }
    labels
}

fn random_cluster(rng: &mut Rng) -> Cluster {
    let mut cluster = Cluster::default();
    for n in 0..2 + rng.below(3) {
        let name = format!("n{n}");
        let mut labels = random_labels(rng);
        // Mostly one tenant, so policy decides; sometimes another, or none (its own tenant).
        match rng.below(10) {
            0 => {}
            1 | 2 => {
                labels.insert("tenant", TENANTS[1]);
            }
            _ => {
                labels.insert("tenant", TENANTS[0]);
            }
        }
        cluster.namespaces.insert(name.clone(), Namespace { name: name.clone(), labels });
        for p in 0..1 + rng.below(3) {
            let key = PodKey::new(&name, format!("p{p}"));
            let mut ports = Vec::new();
            for (port, protocol, names) in PORTS {
                if rng.chance(75) {
                    let name = rng.pick(names).to_string();
                    let taken = ports.iter().any(|p: &ContainerPort| p.name.as_deref() == Some(name.as_str()));
                    ports.push(ContainerPort { name: (!taken && rng.chance(80)).then_some(name), port, protocol });
                }
            }
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, n as u8, p as u8 + 1));
            cluster.pods.insert(
                key.clone(),
                Pod { key, uid: None, labels: random_labels(rng), ips: vec![ip], node_name: None, host_network: false, host_pid: false, ports: ports.into() },
            );
        }
    }
    cluster
}

fn random_selector(rng: &mut Rng, keys: &[&str], values: &[&str]) -> Value {
    let mut selector = serde_json::Map::new();
    if rng.chance(40) {
        let mut labels = serde_json::Map::new();
        for _ in 0..1 + rng.below(2) {
            labels.insert(rng.pick(keys).to_string(), json!(rng.pick(values)));
        }
        selector.insert("matchLabels".into(), Value::Object(labels));
    }
    if rng.chance(40) {
        let mut expressions = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let key = rng.pick(keys).to_string();
            let expression = match rng.below(4) {
                0 => json!({"key": key, "operator": "In", "values": [rng.pick(values), rng.pick(values)]}),
                1 => json!({"key": key, "operator": "NotIn", "values": [rng.pick(values)]}),
                2 => json!({"key": key, "operator": "Exists"}),
                _ => json!({"key": key, "operator": "DoesNotExist"}),
            };
            expressions.push(expression);
        }
        selector.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Value::Object(selector)
}

fn random_peer(rng: &mut Rng, cluster: &Cluster) -> Value {
    let ns_keys = ["tenant", "app", "env", "kubernetes.io/metadata.name"];
    let ns_values = ["t1", "t2", "a", "b", "n0", "n1"];
    match rng.below(5) {
        0 => json!({"podSelector": random_selector(rng, &LABEL_KEYS, &LABEL_VALUES)}),
        1 => json!({"namespaceSelector": random_selector(rng, &ns_keys, &ns_values)}),
        2 | 3 => json!({
            "namespaceSelector": random_selector(rng, &ns_keys, &ns_values),
            "podSelector": random_selector(rng, &LABEL_KEYS, &LABEL_VALUES),
        }),
        _ => {
            let pods: Vec<&Pod> = cluster.pods.values().collect();
            let some = rng.pick(&pods).ips[0];
            let IpAddr::V4(v4) = some else { unreachable!() };
            let [a, b, c, _] = v4.octets();
            let (cidr, excepts): (String, Vec<String>) = match rng.below(4) {
                0 => ("10.0.0.0/8".into(), vec![format!("{a}.{b}.{c}.0/24")]),
                1 => (format!("{a}.{b}.{c}.0/24"), vec![format!("{v4}/32")]),
                2 => (format!("{v4}/32"), vec![]),
                _ => ("0.0.0.0/0".into(), vec![format!("{v4}/32"), "10.0.1.0/24".into()]),
            };
            let excepts: Vec<String> = excepts.into_iter().filter(|_| rng.chance(70)).collect();
            json!({"ipBlock": {"cidr": cidr, "except": excepts}})
        }
    }
}

fn random_ports(rng: &mut Rng) -> Value {
    let choices = [
        json!({"port": 80}),
        json!({"protocol": "UDP", "port": 81}),
        json!({"port": 80, "endPort": 81}),
        json!({"protocol": "UDP", "port": 79, "endPort": 80}),
        json!({"port": "http"}),
        json!({"port": "web"}),
        json!({"protocol": "UDP", "port": "dns"}),
        json!({"protocol": "UDP", "port": "http"}),
        json!({"protocol": "UDP"}),
        json!({"protocol": "SCTP"}),
        json!({}),
    ];
    Value::Array((0..1 + rng.below(2)).map(|_| rng.pick(&choices).clone()).collect())
}

fn random_rules(rng: &mut Rng, cluster: &Cluster, peers_key: &str) -> Value {
    let mut rules = Vec::new();
    for _ in 0..rng.below(3) {
        let mut rule = serde_json::Map::new();
        match rng.below(4) {
            0 => {}
            1 => {
                rule.insert(peers_key.into(), json!([]));
            }
            _ => {
                let peers: Vec<Value> = (0..1 + rng.below(2)).map(|_| random_peer(rng, cluster)).collect();
                rule.insert(peers_key.into(), Value::Array(peers));
            }
        }
        if rng.chance(50) {
            rule.insert("ports".into(), random_ports(rng));
        }
        rules.push(Value::Object(rule));
    }
    Value::Array(rules)
}

/// The policies as the API server has them: what the evaluator reads (the model keeps them
/// normalized).
type ApiPolicies = BTreeMap<ObjectKey, NetworkPolicy>;

fn random_policies(rng: &mut Rng, cluster: &Cluster) -> ApiPolicies {
    let mut policies = ApiPolicies::new();
    let namespaces: Vec<String> = cluster.namespaces.keys().cloned().collect();
    for i in 0..rng.below(4) {
        let namespace = rng.pick(&namespaces).clone();
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), random_selector(rng, &LABEL_KEYS, &LABEL_VALUES));
        if rng.chance(70) {
            spec.insert("ingress".into(), random_rules(rng, cluster, "from"));
        }
        if rng.chance(50) {
            spec.insert("egress".into(), random_rules(rng, cluster, "to"));
        }
        match rng.below(5) {
            0 => {
                spec.insert("policyTypes".into(), json!(["Ingress"]));
            }
            1 => {
                spec.insert("policyTypes".into(), json!(["Egress"]));
            }
            2 => {
                spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
            }
            _ => {}
        }
        let name = format!("np{i}");
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": Value::Object(spec),
        }))
        .unwrap();
        policies.insert(ObjectKey::new(namespace, name), policy);
    }
    policies
}

// ---- The spec, evaluated directly ----

fn tenant_of(cluster: &Cluster, namespace: &str) -> String {
    match cluster.namespaces.get(namespace).and_then(|ns| ns.labels.get("tenant")) {
        Some(tenant) => tenant.to_string(),
        None => format!("ns:{namespace}"),
    }
}

fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v.as_str()));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("operator {other}"),
        }
    });
    labels_ok && expressions_ok
}

fn namespace_labels(cluster: &Cluster, namespace: &str) -> Labels {
    let mut labels = cluster.namespaces[namespace].labels.clone();
    labels.insert("kubernetes.io/metadata.name", namespace);
    labels
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (base, len) = cidr.split_once('/').unwrap();
    let (IpAddr::V4(ip), Ok(IpAddr::V4(base))) = (ip, base.parse::<IpAddr>()) else { return false };
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(base) & mask
}

fn peer_matches(cluster: &Cluster, policy_ns: &str, peer: &NetworkPolicyPeer, other: &Pod) -> bool {
    if let Some(block) = &peer.ip_block {
        return other.ips.iter().any(|ip| {
            in_cidr(*ip, &block.cidr) && !block.except.iter().flatten().any(|e| in_cidr(*ip, e))
        });
    }
    let namespace_ok = match &peer.namespace_selector {
        None => *other.key.namespace == *policy_ns,
        Some(selector) => selector_matches(selector, &namespace_labels(cluster, &other.key.namespace)),
    };
    let pod_ok = peer.pod_selector.as_ref().is_none_or(|selector| selector_matches(selector, &other.labels));
    namespace_ok && pod_ok
}

fn port_matches(rule: &NetworkPolicyPort, destination: &Pod, protocol: Protocol, port: u16) -> bool {
    let rule_protocol = rule.protocol.as_deref().unwrap_or("TCP");
    if rule_protocol != protocol.as_str() {
        return false;
    }
    match &rule.port {
        None => true,
        Some(IntOrString::Int(start)) => {
            let end = rule.end_port.unwrap_or(*start);
            (*start..=end).contains(&i32::from(port))
        }
        Some(IntOrString::String(name)) => destination
            .ports
            .iter()
            .any(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol && p.port == port),
    }
}

/// (policies selecting `pod` for this direction, their rules as (peers, ports)).
type SpecRule = (Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>);

fn rules_for(policies: &ApiPolicies, pod: &Pod, ingress: bool) -> Option<Vec<(String, SpecRule)>> {
    let mut selected = false;
    let mut rules = Vec::new();
    for (key, policy) in policies {
        if key.namespace != pod.key.namespace {
            continue;
        }
        let spec = policy.spec.clone().unwrap_or_default();
        let types = match &spec.policy_types {
            Some(types) if !types.is_empty() => types.clone(),
            _ => {
                let mut types = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    types.push("Egress".into());
                }
                types
            }
        };
        if !types.iter().any(|t| t == if ingress { "Ingress" } else { "Egress" }) {
            continue;
        }
        if !selector_matches(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels) {
            continue;
        }
        selected = true;
        if ingress {
            rules.extend(spec.ingress.into_iter().flatten().map(|r| (key.namespace.to_string(), (r.from, r.ports))));
        } else {
            rules.extend(spec.egress.into_iter().flatten().map(|r| (key.namespace.to_string(), (r.to, r.ports))));
        }
    }
    selected.then_some(rules)
}

#[allow(clippy::too_many_arguments)]
fn direction_allows(cluster: &Cluster, policies: &ApiPolicies, selected: &Pod, peer: &Pod, destination: &Pod, ingress: bool, protocol: Protocol, port: u16) -> bool {
    let Some(rules) = rules_for(policies, selected, ingress) else { return true };
    rules.iter().any(|(policy_ns, (peers, ports))| {
        let peer_ok = match peers {
            None => true,
            Some(peers) if peers.is_empty() => true,
            Some(peers) => peers.iter().any(|p| peer_matches(cluster, policy_ns, p, peer)),
        };
        let port_ok = match ports {
            None => true,
            Some(ports) if ports.is_empty() => true,
            Some(ports) => ports.iter().any(|p| port_matches(p, destination, protocol, port)),
        };
        peer_ok && port_ok
    })
}

fn spec_allows(cluster: &Cluster, policies: &ApiPolicies, from: &PodKey, to: &PodKey, protocol: Protocol, port: u16) -> bool {
    if tenant_of(cluster, &from.namespace) != tenant_of(cluster, &to.namespace) {
        return false;
    }
    let (src, dst) = (&cluster.pods[from], &cluster.pods[to]);
    direction_allows(cluster, policies, src, dst, dst, false, protocol, port) && direction_allows(cluster, policies, dst, src, dst, true, protocol, port)
}

fn describe(cluster: &Cluster, policies: &ApiPolicies) -> String {
    let mut out = String::new();
    for ns in cluster.namespaces.values() {
        out.push_str(&format!("namespace {} {:?}\n", ns.name, ns.labels));
    }
    for pod in cluster.pods.values() {
        let ports: Vec<String> = pod.ports.iter().map(|p| format!("{}/{}{}", p.port, p.protocol, p.name.as_ref().map(|n| format!("({n})")).unwrap_or_default())).collect();
        out.push_str(&format!("pod {} {:?} {:?} [{}]\n", pod.key, pod.labels, pod.ips, ports.join(" ")));
    }
    for (key, policy) in policies {
        out.push_str(&format!("policy {key}: {}\n", serde_json::to_string(&policy.spec).unwrap()));
    }
    out
}

fn check_seed(seed: u64) -> Result<(usize, usize), String> {
    let mut rng = Rng(seed);
    let mut cluster = random_cluster(&mut rng);
    let policies = random_policies(&mut rng, &cluster);
    for (key, api) in &policies {
        let (_, normalized) = convert::network_policy(api).map_err(|e| format!("seed {seed}: {key} refused: {e}\n{}", describe(&cluster, &policies)))?;
        cluster.network_policies.insert(key.clone(), Arc::new(normalized));
    }
    let desired = compile_scoped(&cluster, &Config::default(), &PodCgroups::new(), Scope::Cluster)
        .map_err(|e| format!("seed {seed}: does not compile: {e}\n{}", describe(&cluster, &policies)))?;
    let pods: Vec<&PodKey> = cluster.pods.keys().collect();
    let (mut checked, mut allowed) = (0, 0);
    for from in &pods {
        for to in pods.iter().filter(|to| *to != from) {
            for (port, protocol) in [(80, Protocol::Tcp), (81, Protocol::Tcp), (80, Protocol::Udp), (81, Protocol::Udp), (80, Protocol::Sctp)] {
                let got = explain(&cluster, &desired, from, to, Target::Port(port, protocol), Family::V4).map_err(|e| e.to_string())?;
                let want = spec_allows(&cluster, &policies, from, to, protocol, port);
                if (got.verdict == "allow") != want {
                    return Err(format!(
                        "seed {seed}: {from} -> {to} {port}/{protocol}: spec says {}, explain says {} ({:?})\n{}",
                        if want { "allow" } else { "deny" },
                        got.verdict,
                        got.reasons,
                        describe(&cluster, &policies)
                    ));
                }
                checked += 1;
                allowed += usize::from(want);
            }
        }
    }
    Ok((checked, allowed))
}

#[test]
fn explain_agrees_with_a_direct_reading_of_the_spec() {
    let seeds: Vec<u64> = match std::env::var("MOAT_SPEC_SEED") {
        Ok(seed) => vec![seed.parse().expect("MOAT_SPEC_SEED is a number")],
        Err(_) => (1..=3000).collect(),
    };
    let (mut checked, mut allowed) = (0, 0);
    let mut failures = Vec::new();
    for seed in seeds {
        match check_seed(seed) {
            Ok((n, a)) => {
                checked += n;
                allowed += a;
            }
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{} of the seeds disagree; the first:\n{}", failures.len(), failures[0]);
    if failures.is_empty() && checked > 1000 {
        // Both outcomes well represented, or the generator tests too little.
        assert!(allowed * 5 > checked && (checked - allowed) * 5 > checked, "{allowed} of {checked} allowed");
    }
    assert!(failures.is_empty() || checked > 0);
}

#[test]
fn the_evaluator_itself_follows_the_spec() {
    // A few fixed facts, so a bug in the evaluator cannot hide one in the compiler.
    let mut labels = Labels::new();
    labels.insert("app", "a");
    let selector: LabelSelector = serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}, {"key": "env", "operator": "DoesNotExist"}]})).unwrap();
    assert!(selector_matches(&selector, &labels));
    assert!(in_cidr("10.0.1.2".parse().unwrap(), "10.0.0.0/8"));
    assert!(!in_cidr("10.0.1.2".parse().unwrap(), "10.0.0.0/24"));
    assert!(in_cidr("10.0.1.2".parse().unwrap(), "0.0.0.0/0"));
}
