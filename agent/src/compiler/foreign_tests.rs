//! Node profiles in the compiled entries: which pods are foreign, the flag on their entries,
//! and the verdicts the datapath reaches over them.

use moat_common::maps::ENDPOINT_FOREIGN;
use moat_common::verdict::{LocalEnd, Peer, Reason};
use moat_common::IPPROTO_TCP;

use super::*;
use crate::compiler::{compile, compile_scoped, mapped, Desired, Scope};
use crate::model::Namespace;
use crate::node::cgroups::{PodCgroups, PodRef};

const LABEL: &str = "node-restriction.kubernetes.io/tenant";

/// alpha/web (10.0.0.1, cgroup 1), beta/web (.2, cgroup 2), beta/api (.3, cgroup 3),
/// kube-system/proxy (no tenant, .4, cgroup 4); the node is reserved for `node_tenant`.
fn cluster(node_tenant: Option<&str>) -> Cluster {
    let mut cluster = Cluster::default();
    for (name, tenant) in [("alpha", Some("alpha")), ("beta", Some("beta")), ("kube-system", None)] {
        let labels = tenant.map(|t| [("tenant".to_string(), t.to_string())].into()).unwrap_or_default();
        cluster.namespaces.insert(name.into(), Namespace { name: name.into(), labels });
    }
    for (ns, name, ip) in [("alpha", "web", "10.0.0.1"), ("beta", "web", "10.0.0.2"), ("beta", "api", "10.0.0.3"), ("kube-system", "proxy", "10.0.0.4")] {
        let key = PodKey::new(ns, name);
        let pod = Pod {
            key: key.clone(),
            uid: None,
            labels: Default::default(),
            ips: vec![ip.parse().unwrap()],
            node_name: Some("node-1".into()),
            host_network: false,
            host_pid: false,
            ports: Vec::new().into(),
        };
        cluster.pods.insert(key, pod);
    }
    if let Some(tenant) = node_tenant {
        cluster.node_labels.insert(LABEL, tenant);
    }
    cluster
}

fn cgroups() -> PodCgroups {
    [("alpha", "web"), ("beta", "web"), ("beta", "api"), ("kube-system", "proxy")]
        .iter()
        .enumerate()
        .map(|(i, (ns, name))| (i as u64 + 1, PodRef::Key(PodKey::new(*ns, *name))))
        .collect()
}

fn config(mode: Option<&str>) -> Config {
    let mut config = Config { node_name: Some("node-1".into()), ..Config::default() };
    if let Some(mode) = mode {
        config.guard.detections.insert("node.foreign-tenant".into(), serde_yaml::from_str(mode).unwrap());
    }
    config
}

fn remote(desired: &Desired, ip: &str) -> Peer {
    desired.remote_peer(&mapped(ip.parse().unwrap()))
}

fn local(desired: &Desired, cgroup: u64) -> Peer {
    Peer::local(desired.local.get(&cgroup).copied())
}

fn foreign_pods(desired: &Desired) -> Vec<String> {
    desired.index.foreign.pods.keys().map(ToString::to_string).collect()
}

#[test]
fn another_tenants_pod_is_flagged_and_denied_both_ways() {
    let desired = compile(&cluster(Some("alpha")), &config(None), &cgroups()).unwrap();
    assert_eq!(foreign_pods(&desired), ["beta/api", "beta/web"]);
    assert_eq!(desired.index.foreign.pods[&PodKey::new("beta", "web")], TenantName::Label("beta".into()));
    assert_eq!(desired.local[&2].flags & ENDPOINT_FOREIGN, ENDPOINT_FOREIGN, "local entry");
    assert_eq!(desired.remote[&mapped("10.0.0.2".parse().unwrap())].flags & ENDPOINT_FOREIGN, ENDPOINT_FOREIGN, "remote entry");
    assert_eq!(desired.local[&1].flags, 0, "alpha is at home");
    assert_eq!(desired.local[&4].flags, 0, "a pod without a tenant is never foreign");

    let (alpha, beta, beta_api, proxy) = (local(&desired, 1), local(&desired, 2), local(&desired, 3), local(&desired, 4));
    let at = |src, dst, end| desired.decide_at(src, dst, IPPROTO_TCP, 80, end, 0);
    // Within beta, which the floor alone allows: both ends, both hooks.
    assert_eq!(at(beta, remote(&desired, "10.0.0.3"), LocalEnd::Source), Reason::ForeignTenant, "egress");
    assert_eq!(at(remote(&desired, "10.0.0.2"), beta_api, LocalEnd::Destination), Reason::ForeignTenant, "ingress");
    // To and from pods at home, and the outside world.
    assert_eq!(at(alpha, remote(&desired, "10.0.0.2"), LocalEnd::Source), Reason::ForeignTenant);
    assert_eq!(at(remote(&desired, "10.0.0.2"), alpha, LocalEnd::Destination), Reason::ForeignTenant);
    assert_eq!(at(beta, Peer::UNKNOWN, LocalEnd::Source), Reason::ForeignTenant);
    assert_eq!(at(Peer::UNKNOWN, beta, LocalEnd::Destination), Reason::ForeignTenant);
    // Everyone else as before.
    assert_eq!(at(alpha, Peer::UNKNOWN, LocalEnd::Source), Reason::UnknownAllowed);
    assert_eq!(at(proxy, remote(&desired, "10.0.0.1"), LocalEnd::Source), Reason::CrossTenant);
}

#[test]
fn detect_mode_reports_without_touching_the_entries() {
    let desired = compile(&cluster(Some("alpha")), &config(Some("detect")), &cgroups()).unwrap();
    assert_eq!(foreign_pods(&desired), ["beta/api", "beta/web"]);
    assert_eq!(desired.index.foreign.profile.as_ref().map(|p| p.mode), Some(GuardMode::Detect));
    assert!(desired.local.values().chain(desired.remote.values()).all(|e| e.flags & ENDPOINT_FOREIGN == 0));
    let same_tenant = desired.decide_at(local(&desired, 2), remote(&desired, "10.0.0.3"), IPPROTO_TCP, 80, LocalEnd::Source, 0);
    assert_eq!(same_tenant, Reason::SameTenant);
}

#[test]
fn off_unlabelled_and_empty_labels_make_nothing_foreign() {
    let unprofiled = compile(&cluster(None), &config(None), &cgroups()).unwrap();
    assert_eq!(unprofiled.index.foreign, Foreign::default());
    let empty = compile(&cluster(Some("")), &config(None), &cgroups()).unwrap();
    assert_eq!(empty.index.foreign, Foreign::default(), "an empty value names no tenant");
    let off = compile(&cluster(Some("alpha")), &config(Some("off")), &cgroups()).unwrap();
    assert_eq!(off.index.foreign, Foreign::default());
    assert_eq!(off, compile(&cluster(None), &config(Some("off")), &cgroups()).unwrap(), "off: the label changes nothing");
    let mut other_label = config(None);
    other_label.guard.node_tenant_label = "example.com/tenant".into();
    assert!(compile(&cluster(Some("alpha")), &other_label, &cgroups()).unwrap().index.foreign.pods.is_empty());
}

#[test]
fn exempt_namespaces_and_pods_elsewhere_are_not_foreign() {
    let mut exempt = config(None);
    exempt.guard.exempt_namespaces = vec!["beta".into()];
    assert!(compile(&cluster(Some("alpha")), &exempt, &cgroups()).unwrap().index.foreign.pods.is_empty());

    // beta/api is scheduled on another node: not running here, so not foreign here.
    let mut elsewhere = cluster(Some("alpha"));
    if let Some(pod) = elsewhere.pods.get_mut(&PodKey::new("beta", "api")) {
        pod.node_name = Some("node-2".into());
    }
    let desired = compile(&elsewhere, &config(None), &cgroups()).unwrap();
    assert_eq!(foreign_pods(&desired), ["beta/web"]);
    assert_eq!(desired.remote[&mapped("10.0.0.3".parse().unwrap())].flags, 0);
    let explained = compile_scoped(&elsewhere, &config(None), &PodCgroups::new(), Scope::Cluster).unwrap();
    assert_eq!(foreign_pods(&explained), ["beta/web"], "explain takes the pods scheduled here");

    // Only pods with a cgroup here run here.
    let only_alpha: PodCgroups = [(1, PodRef::Key(PodKey::new("alpha", "web")))].into();
    assert!(compile(&cluster(Some("alpha")), &config(None), &only_alpha).unwrap().index.foreign.pods.is_empty());
}

#[test]
fn explain_over_the_cluster_flags_what_the_node_flags() {
    // Explain compiles without cgroups; the remote entries it evaluates must carry the same
    // flag as the entries this node writes.
    let node = compile(&cluster(Some("alpha")), &config(None), &cgroups()).unwrap();
    let explain = compile_scoped(&cluster(Some("alpha")), &config(None), &PodCgroups::new(), Scope::Cluster).unwrap();
    assert_eq!(node.remote, explain.remote);
    assert_eq!(node.index.foreign, explain.index.foreign);
}
