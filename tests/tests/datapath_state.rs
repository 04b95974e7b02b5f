//! The datapath's per-packet state on the real kernel, through BPF_PROG_TEST_RUN on the
//! real object (private pins, nothing attached): an established flow is cut by the next
//! generation, a verdict cached for earlier flows does not outlive it, established
//! packets counted in the per-CPU slots reach the agent's verdict counters (also when another
//! key held the slot), a packet program whose decider slot is empty passes what it
//! cannot decide, counted as not ready, and a pod's traffic to itself (loopback, its own
//! address) is never policed nor tracked — unless the pod is hostNetwork.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use moat_lab::bench::harness::{own_cgroup_id, test_run, Loaded};
use moat_lab::bench::testrun::{self, tcp_frame, DROP, PASS, TCP_ACK, TCP_SYN};
use moat_agent::compiler::{compile, Desired};
use moat_agent::config::Config;
use moat_agent::kernel::stats::KernelStats;
use moat_agent::model::PodKey;
use moat_agent::node::cgroups::{PodCgroups, PodRef};
use moat_agent::kernel::loader;
use moat_common::maps::{
    counter_slot, decision_slot, names, CounterKey, SlotCounter, DIRECTION_EGRESS, DIRECTION_INGRESS, STAGE_DECIDE,
    VERDICT_ALLOW, VERDICT_DENY,
};
use moat_common::verdict::Reason;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Client and server of one tenant; the client's egress allowed to the server on `port`.
fn manifests(port: u16) -> String {
    let pod = |name: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: a\n  labels:\n    app: {name}\n\
             spec:\n  containers:\n    - name: c\n      image: x\n      ports:\n        - containerPort: 80\n\
             status:\n  podIP: {ip}\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    tenant: a\n---\n{}{}\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: client-out\n  namespace: a\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: client\n  policyTypes: [Egress]\n  egress:\n    \
         - to:\n        - podSelector:\n            matchLabels:\n              app: server\n      ports:\n        \
         - port: {port}\n",
        pod("client", CLIENT),
        pod("server", SERVER)
    )
}

/// The compiled state with this process's cgroup (and 0) as the client pod.
fn desired(dir: &Path, port: u16, cgroup: u64) -> Desired {
    desired_from(dir, &format!("cluster-{port}.yaml"), &manifests(port), cgroup)
}

fn desired_from(dir: &Path, name: &str, manifests: &str, cgroup: u64) -> Desired {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, manifests).expect("writing manifests");
    let cluster = moat_agent::sources::manifests::load(&[path]).expect("manifests load").cluster;
    let client = PodRef::Key(PodKey::new("a", "client"));
    let cgroups: PodCgroups = [(cgroup, client.clone()), (0, client)].into();
    compile(&cluster, &Config::default(), &cgroups).expect("compiles")
}

fn syn(port: u16) -> Vec<u8> {
    tcp_frame(CLIENT, port, SERVER, 80, TCP_SYN)
}

fn ack(port: u16) -> Vec<u8> {
    tcp_frame(CLIENT, port, SERVER, 80, TCP_ACK)
}

#[test]
fn a_new_generation_cuts_established_flows_and_cached_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = own_cgroup_id().expect("own cgroup");
    let allowed = desired(dir.path(), 80, cgroup);
    let denied = desired(dir.path(), 81, cgroup);
    let tenant = allowed.local[&cgroup].tenant;
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-datapath-{}", std::process::id())).expect("loads");
    loaded.maps.apply(&Desired::default(), &allowed).expect("apply");
    let egress = loaded.skb_program("moat_egress").expect("moat_egress");
    let run = |packet: &[u8], repeat| test_run("moat_egress", egress, packet, repeat).expect("test run").retval;

    assert_eq!(run(&syn(40000), 1), PASS, "the policy allows the client's connection");
    assert_eq!(run(&ack(40000), 100), PASS, "its packets are established");
    assert_eq!(run(&syn(40001), 1), PASS, "a second connection to the same peer and port");

    let stats = KernelStats::open(&loaded.dirs.maps).expect("stats");
    let established = CounterKey { tenant, direction: DIRECTION_EGRESS, verdict: VERDICT_ALLOW, reason: Reason::Established as u8, _pad: [0; 5] };
    let counted = stats.counters().into_iter().find(|(key, _)| *key == established).map(|(_, c)| c.packets);
    assert_eq!(counted, Some(100), "the established packets, summed from the per-CPU slots");
    let policy_allowed = CounterKey { reason: Reason::PolicyAllowed as u8, ..established };
    let counted = stats.counters().into_iter().find(|(key, _)| *key == policy_allowed).map(|(_, c)| c.packets);
    assert_eq!(counted, Some(2), "both SYNs, the second by its cached verdict");

    // The policy now allows another port: the next generation cuts what it no longer allows.
    loaded.maps.apply(&allowed, &denied).expect("apply");
    assert_eq!(run(&ack(40000), 1), DROP, "an established flow is cut on its next packet");
    assert_eq!(run(&syn(40002), 1), DROP, "a verdict cached under the old generation no longer applies");
    assert_eq!(run(&ack(40001), 1), DROP, "the second flow is cut too");

    // And back: new connections are decided again, and allowed.
    loaded.maps.apply(&denied, &allowed).expect("apply");
    assert_eq!(run(&syn(40003), 1), PASS);
    assert_eq!(run(&ack(40003), 10), PASS);
}

#[test]
fn an_empty_decider_slot_passes_undecided_packets_counted_as_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = own_cgroup_id().expect("own cgroup");
    // Allowed to port 81 only: a SYN to port 80 is denied.
    let denied = desired(dir.path(), 81, cgroup);
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-stages-{}", std::process::id())).expect("loads");
    loaded.maps.apply(&Desired::default(), &denied).expect("apply");
    let egress = loaded.skb_program("moat_egress").expect("moat_egress");
    let run = |packet: &[u8]| test_run("moat_egress", egress, packet, 1).expect("test run").retval;
    assert_eq!(run(&syn(41000)), DROP, "decided by the decider stage");

    loaded.clear_stage(names::EGRESS_STAGES, STAGE_DECIDE).expect("clear");
    assert_eq!(run(&syn(41001)), PASS, "no decider: passed, as enforcement ends");
    assert_eq!(run(&syn(41002)), PASS);
    let stats = KernelStats::open(&loaded.dirs.maps).expect("stats");
    let not_ready = CounterKey { tenant: 0, direction: DIRECTION_EGRESS, verdict: VERDICT_ALLOW, reason: Reason::NotReady as u8, _pad: [0; 5] };
    let counted = stats.counters().into_iter().find(|(key, _)| *key == not_ready).map(|(_, c)| c.packets);
    assert_eq!(counted, Some(2), "each undecided packet counted as not ready");

    loader::arm_stages(&mut loaded.ebpf).expect("re-arm");
    assert_eq!(run(&syn(41003)), DROP, "decided again once the slot is written");
}

#[test]
fn a_counter_slot_another_key_held_hands_that_keys_counts_on_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = own_cgroup_id().expect("own cgroup");
    let allowed = desired(dir.path(), 80, cgroup);
    let tenant = allowed.local[&cgroup].tenant;
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-slots-{}", std::process::id())).expect("loads");
    loaded.maps.apply(&Desired::default(), &allowed).expect("apply");
    let egress = loaded.skb_program("moat_egress").expect("moat_egress");
    let run = |packet: &[u8], repeat| test_run("moat_egress", egress, packet, repeat).expect("test run").retval;

    let established = CounterKey { tenant, direction: DIRECTION_EGRESS, verdict: VERDICT_ALLOW, reason: Reason::Established as u8, _pad: [0; 5] };
    let policy_allowed = CounterKey { reason: Reason::PolicyAllowed as u8, ..established };
    // Other keys hold both slots the client's packets will use, on every CPU, as after
    // another tenant's traffic: 3 packets of 100 bytes each.
    let squatters = [
        (counter_slot(tenant, DIRECTION_EGRESS), CounterKey { tenant: tenant ^ 0x400, ..established }),
        (
            decision_slot(&policy_allowed),
            CounterKey { tenant: 77, direction: DIRECTION_INGRESS, verdict: VERDICT_DENY, reason: Reason::CrossTenant as u8, _pad: [0; 5] },
        ),
    ];
    let cpus = aya::util::nr_cpus().expect("cpus");
    let pin = loaded.dirs.maps.join(names::COUNTER_SLOTS);
    let mut slots: aya::maps::PerCpuArray<_, SlotCounter> =
        aya::maps::Map::PerCpuArray(aya::maps::MapData::from_pin(&pin).expect("COUNTER_SLOTS pin")).try_into().expect("per-CPU array");
    for (index, key) in squatters {
        assert_eq!(counter_slot(key.tenant, DIRECTION_EGRESS) == index, key.reason == Reason::Established as u8);
        let held = vec![SlotCounter { key, packets: 3, bytes: 300 }; cpus];
        slots.set(index, held.try_into().expect("values"), 0).expect("writing the slot");
    }

    assert_eq!(run(&syn(42000), 1), PASS);
    assert_eq!(run(&ack(42000), 10), PASS);
    let counted: std::collections::HashMap<_, _> = KernelStats::open(&loaded.dirs.maps).expect("stats").counters().into_iter().collect();
    for (_, key) in squatters {
        let total = counted.get(&key).map(|c| (c.packets, c.bytes));
        assert_eq!(total, Some((3 * cpus as u64, 300 * cpus as u64)), "the slot's earlier key keeps every count: {key:?}");
    }
    assert_eq!(counted.get(&policy_allowed).map(|c| c.packets), Some(1), "the SYN");
    assert_eq!(counted.get(&established).map(|c| c.packets), Some(10), "the ACKs");
}

#[test]
fn a_pods_traffic_to_itself_is_never_policed_but_a_host_network_pods_loopback_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = own_cgroup_id().expect("own cgroup");
    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
    // The client may reach the server on port 80 only: everything else it sends is refused.
    let isolated = desired(dir.path(), 80, cgroup);
    let host_network = manifests(80).replacen("spec:\n  containers:", "spec:\n  hostNetwork: true\n  containers:", 1);
    let host_network = desired_from(dir.path(), "host-network.yaml", &host_network, cgroup);
    let tenant = isolated.local[&cgroup].tenant;
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-same-pod-{}", std::process::id())).expect("loads");
    loaded.maps.apply(&Desired::default(), &isolated).expect("apply");
    let egress = loaded.skb_program("moat_egress").expect("moat_egress");
    let ingress = loaded.skb_program("moat_ingress").expect("moat_ingress");
    let out = |packet: &[u8]| test_run("moat_egress", egress, packet, 1).expect("test run").retval;
    let into = |packet: &[u8]| test_run("moat_ingress", ingress, packet, 1).expect("test run").retval;

    assert_eq!(out(&tcp_frame(CLIENT, 42000, SERVER, 9000, TCP_SYN)), DROP, "the policy refuses another port of the server");
    assert_eq!(out(&tcp_frame(CLIENT, 42001, LOOPBACK, 9000, TCP_SYN)), PASS, "its own 127.0.0.1");
    assert_eq!(out(&tcp_frame(LOOPBACK, 42002, LOOPBACK, 9000, TCP_SYN)), PASS, "loopback to loopback");
    assert_eq!(out(&tcp_frame(Ipv4Addr::new(127, 0, 0, 6), 42003, CLIENT, 9000, TCP_SYN)), PASS, "a loopback source to its own address");
    assert_eq!(out(&tcp_frame(CLIENT, 42004, CLIENT, 9000, TCP_SYN)), PASS, "its own address to itself");
    assert_eq!(into(&tcp_frame(CLIENT, 9000, CLIENT, 42004, TCP_SYN | TCP_ACK)), PASS, "and the answer coming in");
    // A connection's next packets, which the first stage answers.
    assert_eq!(out(&tcp_frame(CLIENT, 42004, CLIENT, 9000, TCP_ACK)), PASS, "its own address, established");
    assert_eq!(into(&tcp_frame(LOOPBACK, 9000, LOOPBACK, 42002, TCP_ACK)), PASS, "loopback, established, coming in");
    let stats = KernelStats::open(&loaded.dirs.maps).expect("stats");
    let same_pod = |direction| CounterKey { tenant, direction, verdict: VERDICT_ALLOW, reason: Reason::SamePod as u8, _pad: [0; 5] };
    let counted = |direction| stats.counters().into_iter().find(|(key, _)| *key == same_pod(direction)).map(|(_, c)| c.packets);
    assert_eq!(counted(DIRECTION_EGRESS), Some(5), "each counted as the pod's own traffic");
    assert_eq!(counted(DIRECTION_INGRESS), Some(2), "each counted as the pod's own traffic");
    let flows = stats.fill().into_iter().find(|fill| fill.map == names::FLOWS).map(|fill| fill.entries);
    assert_eq!(flows, Some(0), "a pod's own traffic is never tracked (and the refused SYN was not either)");

    // The same addresses on any other device are not the pod's own: a raw socket can put a
    // loopback or the pod's own source on a packet it sends out of eth0. The device is a veth
    // in a network namespace of the test's own (a test run looks it up there; nothing is sent).
    let forged = on_private_device(|device| {
        let out_on = |packet: &[u8]| testrun::run_on(egress, packet, 1, Some(device)).expect("test run").retval;
        [
            out_on(&tcp_frame(CLIENT, 42005, LOOPBACK, 9000, TCP_SYN)),
            out_on(&tcp_frame(Ipv4Addr::new(127, 0, 0, 6), 42006, SERVER, 9000, TCP_SYN)),
            out_on(&tcp_frame(SERVER, 42007, SERVER, 9000, TCP_SYN)),
        ]
    });
    assert_eq!(forged[0], DROP, "127.0.0.1 off the loopback device");
    assert_eq!(forged[1], DROP, "a forged loopback source");
    assert_eq!(forged[2], DROP, "a forged source equal to the destination");
    assert_eq!(out(&tcp_frame(CLIENT, 42008, LOOPBACK, 9000, TCP_SYN)), PASS, "and on loopback again: nothing cached for that peer");

    // A hostNetwork pod's loopback is the node's: policed as before.
    loaded.maps.apply(&isolated, &host_network).expect("apply");
    assert_ne!(host_network.local[&cgroup].flags & moat_common::maps::ENDPOINT_HOST_NETWORK, 0);
    assert_eq!(out(&tcp_frame(CLIENT, 42010, LOOPBACK, 9000, TCP_SYN)), DROP, "a hostNetwork pod's 127.0.0.1 is the node's");
    assert_eq!(out(&tcp_frame(CLIENT, 42011, CLIENT, 9000, TCP_SYN)), DROP, "and its address the node's");
    // Midstream, past the first stage: decided as the flow it may be a part of (an inbound
    // one, which no policy isolates here), not as the pod's own.
    let before = counted(DIRECTION_EGRESS);
    out(&tcp_frame(CLIENT, 42012, LOOPBACK, 9000, TCP_ACK));
    assert_eq!(counted(DIRECTION_EGRESS), before, "a hostNetwork pod's loopback is never counted as its own");
}

/// Runs `f` on a thread of its own in a new network namespace holding one veth pair (by
/// `ip`), with the index of one end: a device a test run's packet can be on. The namespace,
/// and its devices with it, go when the thread ends; the host's networking is never touched.
fn on_private_device<T: Send>(f: impl FnOnce(u32) -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespaces.
                let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(unshared, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
                // A child forked from this thread starts in its network namespace.
                let status = std::process::Command::new("ip")
                    .args(["link", "add", "moat-t0", "type", "veth", "peer", "name", "moat-t1"])
                    .status()
                    .expect("running ip");
                assert!(status.success(), "ip link add: {status}");
                // SAFETY: a NUL-terminated name; the lookup runs in this thread's namespace.
                let index = unsafe { libc::if_nametoindex(c"moat-t0".as_ptr()) };
                assert!(index > 1, "moat-t0 has an index: {}", std::io::Error::last_os_error());
                f(index)
            })
            .join()
            .expect("the private-device thread")
    })
}
