//! The flow table's slots on the real kernel, through BPF_PROG_TEST_RUN on the real object
//! (private pins, nothing attached): a slot counts as a flow only while its check matches its
//! words — a slot torn between two flows never lets a packet through that the policy refuses
//! — and a full set replaces its least recently used flow, whose next segment is decided again.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use moat_agent::compiler::{compile, Desired};
use moat_agent::config::Config;
use moat_agent::model::PodKey;
use moat_agent::node::cgroups::{PodCgroups, PodRef};
use moat_common::flow_table::{check_of, first_slot, hash, FlowSlot, WAYS};
use moat_common::maps::{names, FlowKey};
use moat_lab::bench::harness::{own_cgroup_id, test_run, Loaded};
use moat_lab::bench::testrun::{tcp_frame, DROP, PASS, TCP_ACK, TCP_SYN};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Client and server of one tenant; the client may open connections to the server's port 80
/// and ports 1000–9000 only (egress policy), so a SYN to port 81 is refused.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {tenant: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: a, labels: {app: server}}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: a}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {app: server}}}]
      ports: [{port: 80}, {port: 1000, endPort: 9000}]
"#;

struct Table {
    loaded: Loaded,
    egress: i32,
}

impl Table {
    fn new(instance: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, MANIFESTS).expect("writing manifests");
        let cluster = moat_agent::sources::manifests::load(&[path]).expect("manifests load").cluster;
        let cgroup = own_cgroup_id().expect("own cgroup");
        let client = PodRef::Key(PodKey::new("a", "client"));
        let cgroups: PodCgroups = [(cgroup, client.clone()), (0, client)].into();
        let desired = compile(&cluster, &Config::default(), &cgroups).expect("compiles");
        let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("{instance}-{}", std::process::id())).expect("loads");
        loaded.maps.apply(&Desired::default(), &desired).expect("apply");
        let egress = loaded.skb_program("moat_egress").expect("moat_egress");
        Self { loaded, egress }
    }

    fn send(&self, local_port: u16, remote_port: u16, flags: u8) -> u32 {
        let frame = tcp_frame(CLIENT, local_port, SERVER, remote_port, flags);
        test_run("moat_egress", self.egress, &frame, 1).expect("test run").retval
    }

    fn slots(&self) -> Array<MapData, FlowSlot> {
        let pin = self.loaded.dirs.maps.join(names::FLOWS);
        Map::Array(MapData::from_pin(&pin).expect("FLOWS pin")).try_into().expect("FLOWS is an array")
    }

    /// The live slot holding the client's flow from `local_port`, with its index.
    fn find(&self, local_port: u16) -> Option<(u32, FlowSlot)> {
        let slots = self.slots();
        (0..slots.len()).find_map(|i| {
            let slot = slots.get(&i, 0).ok()?;
            (slot.is_live() && slot.key.local_port == local_port).then_some((i, slot))
        })
    }

    fn write(&self, index: u32, slot: &FlowSlot) {
        self.slots().set(index, slot, 0).expect("writing a slot");
    }
}

fn with_port(key: &FlowKey, local_port: u16, remote_port: u16) -> FlowKey {
    FlowKey { local_port, remote_port, ..*key }
}

#[test]
fn a_slot_counts_only_while_its_check_matches_its_words() {
    let table = Table::new("test-flow-check");
    assert_eq!(table.send(42000, 80, TCP_SYN), PASS, "the policy admits port 80");
    let (_, admitted) = table.find(42000).expect("the admitted flow's slot");
    assert_eq!(table.send(42001, 81, TCP_SYN), DROP, "and refuses port 81");

    // A refused flow's key over an admitted flow's state and check, in the slot where the
    // refused flow's lookup goes: what a reader sees of a slot another CPU is rewriting.
    let refused = with_port(&admitted.key, 42001, 81);
    let index = first_slot(hash(&refused));
    let torn = FlowSlot { key: refused, ..admitted };
    table.write(index, &torn);
    assert_eq!(table.send(42001, 81, TCP_SYN), DROP, "a torn slot is no flow");
    let off_by_one = FlowSlot { check: check_of(&refused, &admitted.state) ^ 2, ..torn };
    table.write(index, &off_by_one);
    assert_eq!(table.send(42001, 81, TCP_SYN), DROP, "nor is a slot one bit off its check");

    // The same words with their own check are a flow: the lookup goes by the slot, so the
    // refusals above were the check's.
    table.write(index, &FlowSlot::new(refused, admitted.state));
    assert_eq!(table.send(42001, 81, TCP_SYN), PASS, "a whole slot is a flow (written here by hand)");
}

#[test]
fn a_full_set_replaces_its_least_recently_used_flow() {
    let table = Table::new("test-flow-sets");
    assert_eq!(table.send(43000, 80, TCP_SYN), PASS);
    let (_, template) = table.find(43000).expect("a slot to take the key's form from");
    // Five flows that share one set: (client port, server port) pairs, found by the hash.
    let set = first_slot(hash(&with_port(&template.key, 50000, 1000)));
    let flows: Vec<(u16, u16)> = (1000..=9000u16)
        .flat_map(|remote| (50000..u16::MAX).map(move |local| (local, remote)))
        .filter(|(local, remote)| first_slot(hash(&with_port(&template.key, *local, *remote))) == set)
        .take(WAYS as usize + 1)
        .collect();
    assert_eq!(flows.len(), WAYS as usize + 1, "flows sharing a set");
    let held = |(local, remote): (u16, u16)| {
        let slots = table.slots();
        (set..set + WAYS).any(|i| {
            slots.get(&i, 0).is_ok_and(|slot| slot.is_live() && slot.key.local_port == local && slot.key.remote_port == remote)
        })
    };
    let (old, new) = flows.split_at(WAYS as usize);

    for (local, remote) in old {
        assert_eq!(table.send(*local, *remote, TCP_SYN), PASS);
    }
    assert!(old.iter().all(|flow| held(*flow)), "four flows fill the set's four slots");

    // Past one unit of the recency hint (64 jiffies; 640 ms at the lowest HZ, 100), every
    // flow but the second is used again.
    std::thread::sleep(Duration::from_millis(1500));
    for (i, (local, remote)) in old.iter().enumerate() {
        if i != 1 {
            assert_eq!(table.send(*local, *remote, TCP_ACK), PASS, "established");
        }
    }
    assert_eq!(table.send(new[0].0, new[0].1, TCP_SYN), PASS, "a fifth flow in the full set");
    assert!(held(new[0]), "the new flow is in the set");
    assert!(!held(old[1]), "in place of the least recently used one");
    assert!([0, 2, 3].iter().all(|i| held(old[*i])), "the others stay");

    // The replaced connection goes on: its next segment is decided again and tracked.
    assert_eq!(table.send(old[1].0, old[1].1, TCP_ACK), PASS, "a replaced flow's next segment");
    assert!(held(old[1]), "tracked again, in the same set");
}
