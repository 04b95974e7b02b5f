//! What the datapath reports on the real kernel, through BPF_PROG_TEST_RUN on the real object
//! (private pins, nothing attached): a connection cut by a new ClusterNetworkPolicy is often
//! cut on a reply, a packet in the other direction from the one the connection was decided
//! in. Its deny event must still name the rule that cut it, which is looked up on the side
//! the connection was decided for, not on the reply's.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{MapData, RingBuf};
use moat_agent::compiler::{compile, Desired};
use moat_agent::config::Config;
use moat_agent::events::deny::DenyRecord;
use moat_agent::events::queue::Input;
use moat_agent::events::reader::decode_record;
use moat_agent::model::PodKey;
use moat_agent::node::cgroups::{PodCgroups, PodRef};
use moat_common::maps::names;
use moat_lab::bench::harness::{own_cgroup_id, test_run, Loaded};
use moat_lab::bench::testrun::{tcp_frame, DROP, PASS, TCP_ACK, TCP_SYN};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// One tenant: client in namespace `front`, server (this process's cgroup) in `back`.
const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: front, labels: {tenant: a, team: front}}
---
apiVersion: v1
kind: Namespace
metadata: {name: back, labels: {tenant: a, team: back}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: front}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: back}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
"#;

/// Admin tier: back refuses front on port 80, the second rule after one that matches nothing
/// here, so a report that looked in the wrong place could not name it by luck.
const ADMIN_DENY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-back}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: back}}}
  ingress:
  - {name: elsewhere, action: Deny, from: [{namespaces: {matchLabels: {team: nobody}}}]}
  - {name: no-front-80, action: Deny, from: [{namespaces: {matchLabels: {team: front}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
"#;

fn desired(dir: &Path, name: &str, manifests: &str, cgroup: u64) -> Desired {
    let path = dir.join(name);
    std::fs::write(&path, manifests).expect("writing manifests");
    let cluster = moat_agent::sources::manifests::load(&[path]).expect("manifests load").cluster;
    let server = PodRef::Key(PodKey::new("back", "server"));
    let cgroups: PodCgroups = [(cgroup, server.clone()), (0, server)].into();
    compile(&cluster, &Config::default(), &cgroups).expect("compiles")
}

/// Every deny the ring buffer holds, named as the agent names them.
fn denials(ring: &mut RingBuf<MapData>, names: &Desired) -> Vec<DenyRecord> {
    std::iter::from_fn(|| ring.next().map(|item| decode_record(&item)))
        .filter_map(|input| match input {
            Some(Input::Deny(event)) => Some(DenyRecord::from_event(&event, &names.index)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_connection_cut_on_its_reply_names_the_rule_that_cut_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = own_cgroup_id().expect("own cgroup");
    let open = desired(dir.path(), "open.yaml", PODS, cgroup);
    let denied = desired(dir.path(), "denied.yaml", &format!("{PODS}---{ADMIN_DENY}"), cgroup);
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-reports-{}", std::process::id())).expect("loads");
    loaded.maps.apply(&Desired::default(), &open).expect("apply");
    let ingress = loaded.skb_program("moat_ingress").expect("moat_ingress");
    let egress = loaded.skb_program("moat_egress").expect("moat_egress");
    let into = |packet: &[u8]| test_run("moat_ingress", ingress, packet, 1).expect("test run").retval;
    let out = |packet: &[u8]| test_run("moat_egress", egress, packet, 1).expect("test run").retval;
    let ring = loaded.ebpf.take_map(names::EVENTS).expect("the EVENTS map");
    let mut ring = RingBuf::try_from(ring).expect("a ring buffer");

    assert_eq!(into(&tcp_frame(CLIENT, 40000, SERVER, 80, TCP_SYN)), PASS, "no policy yet: the connection opens");
    assert_eq!(out(&tcp_frame(SERVER, 80, CLIENT, 40000, TCP_SYN | TCP_ACK)), PASS, "its reply is established");

    loaded.maps.apply(&open, &denied).expect("apply");
    assert_eq!(out(&tcp_frame(SERVER, 80, CLIENT, 40000, TCP_ACK)), DROP, "the next reply re-decides the connection");
    assert_eq!(into(&tcp_frame(CLIENT, 40001, SERVER, 80, TCP_SYN)), DROP, "a new connection, refused on arrival");

    let reports = denials(&mut ring, &denied);
    let named = |record: &DenyRecord| (record.direction, record.rule, record.policies.clone());
    let rule = "Admin tier, ClusterNetworkPolicy admin-back (priority 10), rule 1 \"no-front-80\": Deny".to_string();
    assert_eq!(
        reports.iter().map(named).collect::<Vec<_>>(),
        [("egress", "cluster-network-policy.admin", vec![rule.clone()]), ("ingress", "cluster-network-policy.admin", vec![rule])],
        "the reply's deny names the rule as the new connection's does"
    );
    assert_eq!(reports[0].src.port, 80, "the reply is reported as the packet it was: from the server's port 80");
}
