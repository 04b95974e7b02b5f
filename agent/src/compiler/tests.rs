use std::net::IpAddr;

use moat_common::verdict::{Peer, Reason};
use moat_common::{IPPROTO_TCP, IPPROTO_UDP};

use super::*;
use crate::config::{PortSpec, SharedService, TenantPair};
use crate::model::{Namespace, Pod, Protocol};
use crate::node::cgroups::PodRef;

fn namespace(cluster: &mut Cluster, name: &str, tenant: Option<&str>) {
    let labels = tenant
        .map(|t| [("tenant".to_string(), t.to_string())].into())
        .unwrap_or_default();
    cluster.namespaces.insert(
        name.into(),
        Namespace {
            name: name.into(),
            labels,
        },
    );
}

fn pod(cluster: &mut Cluster, ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) {
    let key = PodKey::new(ns, name);
    cluster.pods.insert(
        key.clone(),
        Pod {
            key,
            uid: Some(format!("uid-{ns}-{name}")),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip.parse().unwrap()],
            node_name: Some("node-1".into()),
            host_network: false,
            host_pid: false,
            ports: Vec::new().into(),
        },
    );
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    namespace(&mut c, "alpha-web", Some("alpha"));
    namespace(&mut c, "alpha-db", Some("alpha"));
    namespace(&mut c, "beta", Some("beta"));
    namespace(&mut c, "kube-system", None);
    pod(&mut c, "alpha-web", "web", "10.0.0.1", &[]);
    pod(&mut c, "alpha-db", "db", "10.0.0.2", &[]);
    pod(&mut c, "beta", "web", "10.0.0.3", &[]);
    pod(
        &mut c,
        "kube-system",
        "coredns",
        "10.0.0.53",
        &[("k8s-app", "kube-dns")],
    );
    c
}

fn remote(desired: &Desired, ip: &str) -> Peer {
    desired.remote_peer(&mapped(ip.parse().unwrap()))
}

#[test]
fn same_tenant_across_namespaces_allowed_cross_tenant_denied() {
    let desired = compile(&cluster(), &Config::default(), &PodCgroups::new()).unwrap();
    let (web, db, beta) = (
        remote(&desired, "10.0.0.1"),
        remote(&desired, "10.0.0.2"),
        remote(&desired, "10.0.0.3"),
    );
    assert_eq!(
        desired.decide(web, db, IPPROTO_TCP, 5432),
        Reason::SameTenant
    );
    assert_eq!(
        desired.decide(web, beta, IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
    assert_eq!(
        desired.decide(beta, web, IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
}

#[test]
fn cluster_dns_reachable_on_53_only_and_not_the_other_way() {
    let desired = compile(&cluster(), &Config::default(), &PodCgroups::new()).unwrap();
    let (web, dns) = (remote(&desired, "10.0.0.1"), remote(&desired, "10.0.0.53"));
    assert_eq!(
        desired.decide(web, dns, IPPROTO_UDP, 53),
        Reason::SharedService
    );
    assert_eq!(
        desired.decide(web, dns, IPPROTO_TCP, 53),
        Reason::SharedService
    );
    assert_eq!(
        desired.decide(web, dns, IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
    assert_eq!(
        desired.decide(dns, web, IPPROTO_UDP, 53),
        Reason::CrossTenant
    );
    assert_eq!(desired.index.shared_names[&1], "cluster-dns");
}

#[test]
fn declared_shared_service_and_tenant_pair() {
    let mut config = Config::default();
    config.shared_services.push(SharedService {
        name: "db".into(),
        namespace: "alpha-db".into(),
        match_labels: Default::default(),
        ports: vec![PortSpec {
            port: 5432,
            protocol: Protocol::Tcp,
        }],
    });
    config.allowed_tenant_pairs.push(TenantPair {
        from: "beta".into(),
        to: "alpha".into(),
    });
    let desired = compile(&cluster(), &config, &PodCgroups::new()).unwrap();
    let (web, db, beta) = (
        remote(&desired, "10.0.0.1"),
        remote(&desired, "10.0.0.2"),
        remote(&desired, "10.0.0.3"),
    );
    let dns = remote(&desired, "10.0.0.53");
    assert_eq!(
        desired.decide(dns, db, IPPROTO_TCP, 5432),
        Reason::SharedService
    );
    assert_eq!(
        desired.decide(dns, db, IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
    assert_eq!(
        desired.decide(beta, web, IPPROTO_TCP, 80),
        Reason::TenantPair
    );
    assert_eq!(
        desired.decide(web, beta, IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
}

#[test]
fn local_cgroups_map_to_pods_and_strays_stay_pending() {
    let cgroups: PodCgroups = [
        (100, PodRef::Key(PodKey::new("alpha-web", "web"))),
        (101, PodRef::Uid("uid-beta-web".into())),
        (102, PodRef::Key(PodKey::new("alpha-web", "gone"))),
    ]
    .into();
    let desired = compile(&cluster(), &Config::default(), &cgroups).unwrap();
    assert_eq!(desired.local.len(), 2);
    assert_eq!(
        desired.local[&100].tenant,
        TenantName::Label("alpha".into()).id().0
    );
    assert_eq!(
        desired.index.pods_by_cgroup[&101],
        PodKey::new("beta", "web")
    );
    let stray = Peer::local(desired.local.get(&102).copied());
    assert_eq!(
        desired.decide(stray, remote(&desired, "10.0.0.1"), IPPROTO_TCP, 80),
        Reason::Pending
    );
    assert_eq!(
        desired.decide(stray, remote(&desired, "10.0.0.53"), IPPROTO_UDP, 53),
        Reason::SharedService
    );
}

#[test]
fn pods_of_other_nodes_are_not_local() {
    let config = Config {
        node_name: Some("node-2".into()),
        ..Config::default()
    };
    let cgroups: PodCgroups = [(100, PodRef::Key(PodKey::new("alpha-web", "web")))].into();
    let desired = compile(&cluster(), &config, &cgroups).unwrap();
    assert!(desired.local.is_empty());
}

#[test]
fn address_claimed_by_two_tenants_is_pending() {
    let mut c = cluster();
    pod(&mut c, "beta", "thief", "10.0.0.1", &[]);
    let desired = compile(&c, &Config::default(), &PodCgroups::new()).unwrap();
    assert_eq!(remote(&desired, "10.0.0.1"), Peer::PENDING);
    assert!(desired
        .index
        .conflicts
        .contains(&"10.0.0.1".parse::<IpAddr>().unwrap()));
}

#[test]
fn unknown_addresses_follow_the_rule_and_cluster_cidrs_are_pending() {
    let mut config = Config::default();
    config.cluster_cidrs.push("10.0.0.0/16".parse().unwrap());
    config.tenant_networks.push(crate::config::TenantNetwork {
        cidr: "192.0.2.0/24".parse().unwrap(),
        tenant: "beta".into(),
    });
    let desired = compile(&cluster(), &config, &PodCgroups::new()).unwrap();
    let web = remote(&desired, "10.0.0.1");
    assert_eq!(
        desired.decide(web, remote(&desired, "8.8.8.8"), IPPROTO_TCP, 443),
        Reason::UnknownAllowed
    );
    assert_eq!(
        desired.decide(web, remote(&desired, "10.0.9.9"), IPPROTO_TCP, 80),
        Reason::Pending
    );
    assert_eq!(
        desired.decide(web, remote(&desired, "192.0.2.7"), IPPROTO_TCP, 80),
        Reason::CrossTenant
    );
    config.unknown_endpoints = crate::config::Action::Deny;
    let desired = compile(&cluster(), &config, &PodCgroups::new()).unwrap();
    assert_eq!(
        desired.decide(web, remote(&desired, "8.8.8.8"), IPPROTO_TCP, 443),
        Reason::UnknownDenied
    );
}

#[test]
fn network_keys_clear_host_bits() {
    let a = network_key(&"10.1.2.3/8".parse().unwrap());
    let b = network_key(&"10.0.0.0/8".parse().unwrap());
    assert_eq!(a, b);
    assert_eq!(a.prefix_len, 104);
    let v6 = network_key(&"fd00::1/64".parse().unwrap());
    assert_eq!(v6.prefix_len, 64);
    assert_eq!(v6.addr[15], 0);
}

#[test]
fn one_pod_change_is_a_handful_of_writes() {
    let base = compile(&cluster(), &Config::default(), &PodCgroups::new()).unwrap();
    let mut c = cluster();
    pod(&mut c, "beta", "new", "10.0.0.9", &[]);
    let next = compile(&c, &Config::default(), &PodCgroups::new()).unwrap();
    let changes = diff::maps(&base.remote, &next.remote);
    assert_eq!(changes.len(), 1);
}

#[test]
fn local_pod_addresses_name_their_lowest_cgroup_and_belong_to_every_cgroup_of_the_pod() {
    let mut cluster = cluster();
    pod(&mut cluster, "beta", "host", "10.0.0.9", &[]);
    if let Some(host) = cluster.pods.get_mut(&PodKey::new("beta", "host")) {
        host.host_network = true;
    }
    let config = Config {
        node_name: Some("node-1".into()),
        ..Config::default()
    };
    let cgroups: PodCgroups = [
        (12, PodRef::Key(PodKey::new("alpha-web", "web"))),
        (11, PodRef::Key(PodKey::new("alpha-web", "web"))),
        (20, PodRef::Key(PodKey::new("beta", "host"))),
    ]
    .into();
    let desired = compile(&cluster, &config, &cgroups).unwrap();
    let web: IpAddr = "10.0.0.1".parse().unwrap();
    // The pod's own address only: no remote pod's, no hostNetwork pod's (the node's address).
    assert_eq!(desired.local_addresses, [(mapped(web), 11)].into());
    // Each container's connect to the pod's address is the pod's own.
    let own = |cgroup| moat_common::maps::PodAddress { cgroup, addr: mapped(web) };
    assert_eq!(desired.pod_addresses, [own(11), own(12)].into());
    // The datapath never takes a hostNetwork pod's loopback for the pod's own.
    assert_eq!(desired.local[&20].flags & moat_common::maps::ENDPOINT_HOST_NETWORK, moat_common::maps::ENDPOINT_HOST_NETWORK);
    assert_eq!(desired.local[&11].flags & moat_common::maps::ENDPOINT_HOST_NETWORK, 0);
}

#[test]
fn index_published_before_the_writes_names_the_old_and_the_new_state() {
    // A namespace moves from alpha to gamma: alpha's last namespace. Events decided under the
    // old maps still carry alpha's id while the new maps are written.
    let config = Config::default();
    let old = compile(&cluster(), &config, &PodCgroups::new()).unwrap();
    let mut moved = cluster();
    namespace(&mut moved, "alpha-web", Some("gamma"));
    namespace(&mut moved, "alpha-db", Some("gamma"));
    moved.pods.remove(&PodKey::new("beta", "web"));
    let new = compile(&moved, &config, &PodCgroups::new()).unwrap();
    let alpha = TenantName::Label("alpha".into()).id().0;
    let gamma = TenantName::Label("gamma".into()).id().0;
    assert!(!new.index.tenants.contains_key(&alpha));
    let both = new.index.naming_also(&old.index, &Delta::between(&old, &new));
    assert_eq!(both.tenants[&alpha].to_string(), "alpha");
    assert_eq!(both.tenants[&gamma].to_string(), "gamma");
    let gone: IpAddr = "10.0.0.3".parse().unwrap();
    assert_eq!(
        both.pods_by_ip[&gone],
        PodKey::new("beta", "web"),
        "a removed pod is still named"
    );
    assert_eq!(
        both.tenant_of(&PodKey::new("alpha-web", "web")).map(ToString::to_string).as_deref(),
        Some("gamma"),
        "the new state wins"
    );
    assert_eq!(
        both.tenant_of(&PodKey::new("beta", "web")).map(ToString::to_string).as_deref(),
        Some("beta"),
        "a removed pod keeps its tenant's name"
    );
}
