//! The full compiler is the oracle: random sequences of watch events (relabels that move
//! namespaces between tenants, pods coming, changing and going, addresses reused, policies
//! added, changed and deleted, cgroups and node labels changing) are taken one batch at a
//! time, and after every step both the incremental state and a simulated kernel, written
//! only with the returned deltas, must equal a full compile of the same model, map by map.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::Incremental;
use crate::compiler::{compile, Delta, Desired};
use crate::config::{Cidr, Config, PortSpec, SharedService, TenantNetwork, TenantPair};
use crate::model::{
    Change, Cluster, ContainerPort, Labels, Namespace, ObjectKey, Pod, PodKey, Protocol,
};
use crate::model::policy::Policy;
use crate::node::cgroups::{PodCgroups, PodRef};

use crate::test_rng::Rng;

const NAMESPACES: [&str; 6] = ["ns0", "ns1", "ns2", "ns3", "kube-system", "ns5"];
const TENANTS: [Option<&str>; 4] = [Some("t0"), Some("t1"), Some("t2"), None];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn namespace(rng: &mut Rng, name: &str) -> Namespace {
    let mut labels = labels(&[("env", *rng.pick(&["prod", "dev"]))]);
    if let Some(tenant) = rng.pick(&TENANTS) {
        labels.insert("tenant", tenant);
    }
    Namespace {
        name: name.into(),
        labels,
    }
}

fn pod(rng: &mut Rng, key: &PodKey) -> Pod {
    let mut pod_labels = labels(&[
        ("app", *rng.pick(&["web", "db", "api"])),
        ("pod-template-hash", *rng.pick(&["5d8f", "77c1"])),
    ]);
    if rng.chance(50) {
        let tier = *rng.pick(&["frontend", "backend"]);
        pod_labels.insert("tier", tier);
    }
    if &*key.namespace == "kube-system" && rng.chance(50) {
        pod_labels.insert("k8s-app", "kube-dns");
    }
    let mut ports = Vec::new();
    if rng.chance(60) {
        ports.push(ContainerPort {
            name: Some("http".into()),
            port: *rng.pick(&[80, 8080]),
            protocol: Protocol::Tcp,
        });
    }
    if rng.chance(30) {
        ports.push(ContainerPort {
            name: Some("metrics".into()),
            port: 9090,
            protocol: Protocol::Tcp,
        });
    }
    if rng.chance(20) {
        ports.push(ContainerPort {
            name: None,
            port: 53,
            protocol: Protocol::Udp,
        });
    }
    // A small pool of addresses, so they are reused and claimed twice.
    let mut ips = vec![format!("10.0.0.{}", 1 + rng.below(14)).parse().unwrap()];
    if rng.chance(10) {
        ips.push(format!("fd00::{}", 1 + rng.below(4)).parse().unwrap());
    }
    if rng.chance(5) {
        ips.clear();
    }
    Pod {
        key: key.clone(),
        uid: Some(format!("uid-{}", rng.below(12))),
        labels: pod_labels,
        ips,
        node_name: Some((*rng.pick(&["n1", "n1", "n2"])).into()),
        host_network: rng.chance(5),
        host_pid: false,
        ports: ports.into(),
    }
}

fn selector(rng: &mut Rng) -> serde_json::Value {
    match rng.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {"app": rng.pick(&["web", "db", "api"])}}),
        2 => {
            json!({"matchExpressions": [{"key": "tier", "operator": rng.pick(&["Exists", "DoesNotExist"])}]})
        }
        _ => {
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]})
        }
    }
}

fn peer(rng: &mut Rng) -> serde_json::Value {
    match rng.below(5) {
        0 => json!({"podSelector": selector(rng)}),
        1 => {
            json!({"namespaceSelector": {"matchLabels": {"tenant": rng.pick(&["t0", "t1", "t2"])}}})
        }
        2 => {
            json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": selector(rng)})
        }
        3 => {
            json!({"ipBlock": {"cidr": rng.pick(&["10.0.0.0/28", "10.0.0.0/8", "0.0.0.0/0", "::/0"]), "except": [rng.pick(&["10.0.0.8/30", "10.0.0.4/31", "10.0.0.1/32"])]}})
        }
        _ => {
            json!({"ipBlock": {"cidr": rng.pick(&["192.168.0.0/16", "10.0.0.12/30", "fd00::/120"])}})
        }
    }
}

fn ports(rng: &mut Rng) -> serde_json::Value {
    match rng.below(5) {
        0 => json!([{"port": 80}]),
        1 => json!([{"port": "http"}]),
        2 => json!([{"protocol": "UDP", "port": 53}, {"port": "metrics"}]),
        3 => json!([{"port": 8000, "endPort": 8100}]),
        _ => serde_json::Value::Null,
    }
}

fn rule(rng: &mut Rng, list: &str) -> serde_json::Value {
    let mut rule = serde_json::Map::new();
    if rng.chance(80) {
        let peers: Vec<_> = (0..1 + rng.below(2)).map(|_| peer(rng)).collect();
        rule.insert(list.into(), json!(peers));
    }
    let ports = ports(rng);
    if !ports.is_null() {
        rule.insert("ports".into(), ports);
    }
    serde_json::Value::Object(rule)
}

fn policy(rng: &mut Rng, key: &ObjectKey) -> NetworkPolicy {
    let ingress: Vec<_> = (0..rng.below(3)).map(|_| rule(rng, "from")).collect();
    let egress: Vec<_> = (0..rng.below(3)).map(|_| rule(rng, "to")).collect();
    let types = rng
        .pick(&[
            json!(["Ingress"]),
            json!(["Egress"]),
            json!(["Ingress", "Egress"]),
            serde_json::Value::Null,
        ])
        .clone();
    let mut spec = json!({"podSelector": selector(rng), "ingress": ingress, "egress": egress});
    if !types.is_null() {
        spec["policyTypes"] = types;
    }
    serde_json::from_value(
        json!({"metadata": {"name": &*key.name, "namespace": &*key.namespace}, "spec": spec}),
    )
    .expect("generated policy")
}

/// A ClusterNetworkPolicy over the same labels, with networks inside and outside the
/// cluster CIDR (they join the address partition).
fn cluster_policy(rng: &mut Rng, name: &str) -> crate::model::cnp::ClusterNetworkPolicy {
    let env = *rng.pick(&["prod", "dev"]);
    let app = *rng.pick(&["web", "db", "api"]);
    let subject = if rng.chance(50) {
        json!({"namespaces": {"matchLabels": {"env": env}}})
    } else {
        json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}})
    };
    let rule = |rng: &mut Rng, egress: bool| {
        let action = *rng.pick(&["Accept", "Deny", "Pass"]);
        // Pods peers and named ports too: which pods exist, with which labels, ports and
        // addresses, is what decides whether the incremental compiler may skip a compile.
        let peer = match rng.below(5) {
            0 if egress && rng.chance(50) => json!({"nodes": {"matchLabels": {"role": *rng.pick(&["infra", "worker"])}}}),
            0 | 1 if egress => json!({"networks": [*rng.pick(&["10.0.0.0/29", "10.0.0.8/30", "172.16.0.0/12"])]}),
            0 | 1 => json!({"namespaces": {"matchLabels": {"env": *rng.pick(&["prod", "dev"])}}}),
            2 => json!({"pods": {"namespaceSelector": {}, "podSelector": selector(rng)}}),
            3 => json!({"pods": {"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {"matchLabels": {"app": *rng.pick(&["web", "db", "api"])}}}}),
            _ => json!({"namespaces": {"matchLabels": {"env": *rng.pick(&["prod", "dev"])}}}),
        };
        let networks = peer.get("networks").is_some() || peer.get("nodes").is_some();
        // A named port with networks or nodes peers is refused by the parser (no ports).
        let protocols = match rng.below(3) {
            1 if networks => json!([{"udp": {"destinationPort": {"number": 53}}}]),
            0 => json!([{"tcp": {"destinationPort": {"range": {"start": 80, "end": 8080}}}}]),
            1 => json!([{"destinationNamedPort": *rng.pick(&["http", "metrics"])}, {"udp": {"destinationPort": {"number": 53}}}]),
            _ => json!([{"tcp": {"destinationPort": {"number": 80}}}, {"udp": {"destinationPort": {"number": 53}}}]),
        };
        let mut rule = json!({"action": action, "protocols": protocols});
        rule[if egress { "to" } else { "from" }] = json!([peer]);
        rule
    };
    let spec = json!({
        "tier": *rng.pick(&["Admin", "Baseline"]),
        "priority": rng.below(3),
        "subject": subject,
        "ingress": [rule(rng, false)],
        "egress": [rule(rng, true), rule(rng, true)],
    });
    crate::model::cnp::ClusterNetworkPolicy::parse(name, Some(&spec)).expect("generated ClusterNetworkPolicy")
}

fn random_change(rng: &mut Rng) -> Change {
    let ns = rng.pick(&NAMESPACES).to_string();
    match rng.below(15) {
        0..=2 => {
            let value = (!rng.chance(15)).then(|| namespace(rng, &ns));
            Change::Namespace(ns, value)
        }
        3..=7 => {
            let key = PodKey::new(ns, format!("p{}", rng.below(6)));
            let value = (!rng.chance(25)).then(|| pod(rng, &key));
            Change::Pod(key, value)
        }
        8..=10 => {
            let key = ObjectKey::new(ns, format!("np{}", rng.below(3)));
            let value = (!rng.chance(30)).then(|| {
                // Normalized without the sources' checks (an except outside its cidr gets
                // through), so the compilers also meet what a source would refuse.
                Arc::new(Policy::from_api(&key, &policy(rng, &key)).expect("generated policy normalizes"))
            });
            Change::Policy(key, value)
        }
        11 => {
            let name = format!("cnp{}", rng.below(3));
            let value = (!rng.chance(30)).then(|| Arc::new(cluster_policy(rng, &name)));
            Change::ClusterPolicy(name, value)
        }
        12 => {
            // A small address pool, so Services share addresses and the first keeps them.
            let key = ObjectKey::new(ns, format!("svc{}", rng.below(3)));
            let cluster_ips = [format!("10.96.0.{}", rng.below(4)), format!("fd00:96::{}", rng.below(4))]
                .into_iter()
                .filter(|_| rng.chance(70))
                .map(|ip| ip.parse().expect("generated address"))
                .collect();
            let value = (!rng.chance(25)).then(|| crate::model::Service { key: key.clone(), cluster_ips });
            Change::Service(key, value)
        }
        13 => {
            // Nodes with addresses inside and outside the cluster CIDR and `networks` ranges,
            // some shared between two Nodes.
            let name = format!("node{}", rng.below(3));
            let value = (!rng.chance(25)).then(|| crate::model::Node {
                labels: labels(&[("role", *rng.pick(&["infra", "worker"]))]),
                addresses: [format!("10.0.0.{}", rng.below(12)), format!("172.16.0.{}", rng.below(3)), format!("fd00:1::{}", rng.below(3))]
                    .into_iter()
                    .filter(|_| rng.chance(60))
                    .map(|ip| ip.parse().expect("generated address"))
                    .collect(),
            });
            Change::Node(name, value)
        }
        _ => {
            let mut node = Labels::new();
            if rng.chance(30) {
                let tenant = *rng.pick(&["t0", "t1"]);
                node.insert("node-restriction.kubernetes.io/tenant", tenant);
            }
            Change::NodeLabels(node)
        }
    }
}

fn random_cgroups(rng: &mut Rng) -> PodCgroups {
    let mut cgroups = PodCgroups::new();
    for cgroup in 0..rng.below(8) {
        let pod_ref = if rng.chance(50) {
            PodRef::Uid(format!("uid-{}", rng.below(12)))
        } else {
            PodRef::Key(PodKey::new(
                *rng.pick(&NAMESPACES),
                format!("p{}", rng.below(6)),
            ))
        };
        cgroups.insert(100 + cgroup as u64 * 3, pod_ref);
    }
    cgroups
}

fn config() -> Config {
    Config {
        node_name: Some("n1".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse::<Cidr>().unwrap()],
        tenant_networks: vec![TenantNetwork { cidr: "192.168.10.0/24".parse().unwrap(), tenant: "t1".into() }],
        allowed_tenant_pairs: vec![TenantPair { from: "t0".into(), to: "t2".into() }],
        shared_services: vec![SharedService {
            name: "registry".into(),
            namespace: "ns5".into(),
            match_labels: labels(&[("app", "api")]),
            ports: vec![PortSpec { port: 5000, protocol: Protocol::Tcp }],
        }],
        dns: crate::config::DnsConfig {
            shared_namespaces: vec!["ns1".into()],
            ..crate::config::DnsConfig::default()
        },
        ..Config::default()
    }
}

/// The kernel's maps as the deltas leave them.
#[derive(Default, Debug, PartialEq)]
struct Kernel {
    local: BTreeMap<u64, moat_common::maps::Endpoint>,
    local_addresses: BTreeMap<[u8; 16], u64>,
    pod_addresses: BTreeSet<moat_common::maps::PodAddress>,
    remote: BTreeMap<[u8; 16], moat_common::maps::Endpoint>,
    networks: BTreeMap<moat_common::maps::NetworkKey, moat_common::maps::Endpoint>,
    shared_ports: BTreeSet<moat_common::maps::SharedPortKey>,
    tenant_pairs: BTreeSet<moat_common::maps::TenantPairKey>,
    policy_rules: BTreeSet<crate::compiler::policy::RuleKey>,
    dns_namespaces: BTreeMap<moat_common::dns::NamespaceKey, moat_common::dns::DnsNamespace>,
    dns_services: BTreeMap<[u8; 16], moat_common::dns::NamespaceKey>,
    dns_zones: BTreeMap<u32, moat_common::dns::DnsZone>,
    cluster_subjects: BTreeMap<u64, moat_common::maps::TierSets>,
    cluster_rules: BTreeMap<crate::compiler::policy::RuleKey, moat_common::maps::TierMatch>,
}

impl Kernel {
    fn write(&mut self, delta: &Delta) {
        fn apply<K: Ord + Copy, V: Copy>(
            map: &mut BTreeMap<K, V>,
            changes: &crate::compiler::diff::Changes<K, V>,
        ) {
            for (key, value) in changes.added.iter().chain(&changes.changed) {
                assert!(
                    changes.added.iter().all(|(k, _)| k != key) || !map.contains_key(key),
                    "added twice"
                );
                map.insert(*key, *value);
            }
            for key in &changes.removed {
                assert!(
                    map.remove(key).is_some(),
                    "removed a key the map does not hold"
                );
            }
        }
        fn apply_set<K: Ord + Copy>(
            set: &mut BTreeSet<K>,
            changes: &crate::compiler::diff::Changes<K, ()>,
        ) {
            for (key, ()) in &changes.added {
                assert!(set.insert(*key), "added a key the map holds");
            }
            for key in &changes.removed {
                assert!(set.remove(key), "removed a key the map does not hold");
            }
        }
        apply(&mut self.local, &delta.local);
        apply(&mut self.local_addresses, &delta.local_addresses);
        apply_set(&mut self.pod_addresses, &delta.pod_addresses);
        apply(&mut self.remote, &delta.remote);
        apply(&mut self.networks, &delta.networks);
        apply_set(&mut self.shared_ports, &delta.shared_ports);
        apply_set(&mut self.tenant_pairs, &delta.tenant_pairs);
        apply_set(&mut self.policy_rules, &delta.policy_rules);
        apply(&mut self.dns_namespaces, &delta.dns_namespaces);
        apply(&mut self.dns_services, &delta.dns_services);
        apply(&mut self.dns_zones, &delta.dns_zones);
        apply(&mut self.cluster_subjects, &delta.cluster_subjects);
        apply(&mut self.cluster_rules, &delta.cluster_rules);
    }

    fn of(desired: &Desired) -> Self {
        Self {
            local: desired.local.clone(),
            local_addresses: desired.local_addresses.clone(),
            pod_addresses: desired.pod_addresses.clone(),
            remote: desired.remote.clone(),
            networks: desired.networks.clone(),
            shared_ports: desired.shared_ports.clone(),
            tenant_pairs: desired.tenant_pairs.clone(),
            policy_rules: desired.policy_rules.keys().copied().collect(),
            dns_namespaces: desired.dns_namespaces.clone(),
            dns_services: desired.dns_services.clone(),
            dns_zones: desired.dns_zones.clone(),
            cluster_subjects: desired.cluster_subjects.clone(),
            cluster_rules: desired.cluster_rules.clone(),
        }
    }
}

fn assert_same(seed: u64, step: usize, incremental: &Desired, full: &Desired) {
    let at = format!("seed {seed}, step {step}");
    assert_eq!(incremental.local, full.local, "LOCAL_ENDPOINTS, {at}");
    assert_eq!(
        incremental.local_addresses, full.local_addresses,
        "LOCAL_ADDRESSES, {at}"
    );
    assert_eq!(incremental.pod_addresses, full.pod_addresses, "POD_ADDRESSES, {at}");
    assert_eq!(incremental.remote, full.remote, "REMOTE_ENDPOINTS, {at}");
    assert_eq!(incremental.networks, full.networks, "REMOTE_NETWORKS, {at}");
    assert_eq!(
        incremental.shared_ports, full.shared_ports,
        "SHARED_PORTS, {at}"
    );
    assert_eq!(
        incremental.tenant_pairs, full.tenant_pairs,
        "TENANT_PAIRS, {at}"
    );
    assert_eq!(
        incremental.policy_rules, full.policy_rules,
        "POLICY_RULES, {at}"
    );
    assert_eq!(
        incremental.dns_namespaces, full.dns_namespaces,
        "DNS_NAMESPACES, {at}"
    );
    assert_eq!(incremental.dns_services, full.dns_services, "DNS_SERVICES, {at}");
    assert_eq!(incremental.dns_zones, full.dns_zones, "DNS_ZONES, {at}");
    assert_eq!(incremental.cluster_subjects, full.cluster_subjects, "CNP_SUBJECTS, {at}");
    assert_eq!(incremental.cluster_rules, full.cluster_rules, "CNP_RULES, {at}");
    assert_eq!(
        (incremental.unknown, incremental.flags, incremental.dns),
        (full.unknown, full.flags, full.dns),
        "SETTINGS, {at}"
    );
    assert_eq!(incremental.index, full.index, "index, {at}");
}

fn run(seed: u64, steps: usize) {
    run_after_list(seed, 0, steps);
}

/// `run`, with a batch of `listed` changes first (more than `LIST_BATCH`: a re-list, which
/// packs the compiler's maps).
fn run_after_list(seed: u64, listed: usize, steps: usize) {
    let config = config();
    let mut rng = Rng::seeded(seed);
    // Start from a random cluster, as after a first list.
    let mut start = Cluster::default();
    for _ in 0..20 {
        start.apply(random_change(&mut rng));
    }
    let cgroups = random_cgroups(&mut rng);
    let mut compiler = Incremental::new(&config, start, cgroups.clone()).expect("first build");
    let full = compile(compiler.cluster(), &config, &cgroups).expect("full compile");
    assert_same(seed, 0, compiler.desired(), &full);
    let mut kernel = Kernel::of(compiler.desired());
    if listed > 0 {
        let batch: Vec<Change> = (0..listed).map(|_| random_change(&mut rng)).collect();
        let delta = compiler.apply(batch, None).unwrap_or_else(|e| panic!("seed {seed}, list: {e}"));
        kernel.write(&delta);
        let full = compile(compiler.cluster(), &config, compiler.cgroups()).expect("full compile");
        assert_same(seed, 0, compiler.desired(), &full);
    }
    for step in 1..=steps {
        let batch: Vec<Change> = (0..if rng.chance(20) { 2 + rng.below(6) } else { 1 })
            .map(|_| random_change(&mut rng))
            .collect();
        let cgroups = rng.chance(10).then(|| random_cgroups(&mut rng));
        let delta = compiler
            .apply(batch, cgroups)
            .unwrap_or_else(|e| panic!("seed {seed}, step {step}: {e}"));
        kernel.write(&delta);
        let full = compile(compiler.cluster(), &config, compiler.cgroups()).expect("full compile");
        assert_same(seed, step, compiler.desired(), &full);
        assert_eq!(
            kernel,
            Kernel::of(&full),
            "kernel maps after the deltas, seed {seed}, step {step}"
        );
    }
}

#[test]
fn incremental_state_equals_a_full_compile_after_every_event() {
    // 300 sequences of 40 steps: 12,000 events checked map by map.
    for seed in 0..300 {
        run(seed, 40);
    }
}

#[test]
fn after_a_list_sized_batch_packs_the_maps_every_event_still_equals_a_full_compile() {
    for seed in 0..20 {
        run_after_list(seed, super::LIST_BATCH + 1, 40);
    }
}

#[test]
fn a_change_that_does_not_compile_keeps_the_last_state_until_fixed() {
    let mut config = config();
    config.tenant_networks.clear();
    let mut compiler = Incremental::new(&config, Cluster::default(), PodCgroups::new()).unwrap();
    let good = compiler.desired().clone();
    // A policy the sources would refuse (more ipBlocks than the address-range map holds),
    // normalized directly: the compile fails on capacity, not on anything in the model.
    let blocks: Vec<_> = (0..=moat_common::maps::capacity::REMOTE_NETWORKS)
        .map(|i| json!({"ipBlock": {"cidr": format!("10.{}.{}.1/32", i >> 8, i & 255)}}))
        .collect();
    let bad: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "bad", "namespace": "ns0"},
        "spec": {"podSelector": {}, "ingress": [{"from": blocks}]}
    }))
    .unwrap();
    let key = ObjectKey::new("ns0", "bad");
    let error = compiler
        .apply(vec![Change::Policy(key.clone(), Some(Arc::new(Policy::from_api(&key, &bad).unwrap())))], None)
        .unwrap_err();
    assert!(error.to_string().contains("REMOTE_NETWORKS"), "{error}");
    assert_eq!(compiler.desired(), &good, "last good state kept");
    let mut rng = Rng(7);
    let ns = namespace(&mut rng, "ns0");
    assert!(
        compiler
            .apply(vec![Change::Namespace("ns0".into(), Some(ns))], None)
            .is_err(),
        "still refused while the policy is there"
    );
    let delta = compiler
        .apply(vec![Change::Policy(key, None)], None)
        .expect("fixed");
    assert!(!delta.remote.added.is_empty() || compiler.desired().index.tenants.len() == 1);
    let full = compile(compiler.cluster(), &config, compiler.cgroups()).unwrap();
    assert_same(0, 0, compiler.desired(), &full);
}

#[test]
fn a_local_pod_relabelled_between_identities_others_keep_gets_its_new_tier_sets() {
    // p1 (here) moves from web to db; p2 stays web and p3 is db, so no identity appears or
    // leaves the cluster: only p1 being a local subject says the policies need a compile.
    let config = config();
    let pod = |name: &str, app: &str, ip: &str| Pod {
        key: PodKey::new("ns0", name),
        uid: Some(format!("uid-{name}")),
        labels: labels(&[("app", app)]),
        ips: vec![ip.parse().unwrap()],
        node_name: Some("n1".into()),
        host_network: false,
        host_pid: false,
        ports: Vec::new().into(),
    };
    let mut cluster = Cluster::default();
    cluster.namespaces.insert("ns0".into(), Namespace { name: "ns0".into(), labels: labels(&[("tenant", "t0")]) });
    for (name, app, ip) in [("p1", "web", "10.0.0.1"), ("p2", "web", "10.0.0.2"), ("p3", "db", "10.0.0.3")] {
        cluster.pods.insert(PodKey::new("ns0", name), pod(name, app, ip));
    }
    let spec = json!({"tier": "Admin", "priority": 1,
        "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]});
    let policy = crate::model::cnp::ClusterNetworkPolicy::parse("web-closed", Some(&spec)).unwrap();
    cluster.cluster_network_policies.insert("web-closed".into(), Arc::new(policy));
    let cgroups: PodCgroups = [(100, PodRef::Key(PodKey::new("ns0", "p1")))].into_iter().collect();
    let mut compiler = Incremental::new(&config, cluster, cgroups).unwrap();
    assert_eq!(compiler.desired().cluster_subjects.len(), 1, "p1 is a subject");

    compiler.apply(vec![Change::Pod(PodKey::new("ns0", "p1"), Some(pod("p1", "db", "10.0.0.1")))], None).unwrap();
    assert!(compiler.desired().cluster_subjects.is_empty(), "p1 no longer is");
    let full = compile(compiler.cluster(), &config, compiler.cgroups()).unwrap();
    assert_same(0, 1, compiler.desired(), &full);
}
