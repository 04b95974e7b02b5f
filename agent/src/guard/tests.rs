use super::*;
use crate::compiler::Index;
use crate::model::PodKey;


fn attached(kinds: &[(crate::detections::Probe, crate::kernel::guard_probes::Kind)], connect_unix: bool) -> Attached {
    use crate::detections::Probe;
    use crate::kernel::guard_probes::{Kind, ProbeStatus};
    let probes = Probe::ALL
        .iter()
        .map(|probe| {
            let kind = kinds.iter().find(|(p, _)| p == probe).map(|(_, k)| *k);
            let hooks = kind.map(|k| vec![format!("{}/{}", if k == Kind::Lsm { "lsm" } else { "tracepoint" }, probe.name())]).unwrap_or_default();
            (*probe, ProbeStatus { probe: probe.name(), kind, hooks, fallbacks: vec!["no way".into()], needed: true })
        })
        .collect();
    Attached { probes, connect_unix }
}

fn every(kind: crate::kernel::guard_probes::Kind) -> Vec<(crate::detections::Probe, crate::kernel::guard_probes::Kind)> {
    crate::detections::Probe::ALL.iter().map(|p| (*p, kind)).collect()
}

#[test]
fn default_is_block_and_falls_back_to_detect_without_lsm() {
    use crate::detections::Probe;
    use crate::kernel::guard_probes::Kind;
    let config = GuardConfig::default();
    let statuses = statuses(&config, &attached(&every(Kind::Tracepoint), false));
    assert_eq!(statuses.len(), DETECTIONS.len());
    let get = |id: &str| statuses.iter().find(|s| s.id == id).unwrap();
    assert!(statuses.iter().all(|s| s.configured == GuardMode::Block));
    assert_eq!(get("escape.kernel-sysctl").effective, GuardMode::Block);
    assert_eq!(get("escape.setns").effective, GuardMode::Detect);
    assert!(get("escape.setns").note.contains("BPF LSM"), "{}", get("escape.setns").note);
    assert!(get("escape.setns").hooks.contains(&"tracepoint/setns".to_string()), "{:?}", get("escape.setns").hooks);
    let with_lsm = super::statuses(&config, &attached(&every(Kind::Lsm), false));
    assert!(with_lsm.iter().all(|s| s.effective == GuardMode::Block), "{with_lsm:#?}");
    let mut detect = GuardConfig::default();
    detect.detections.insert("escape.kernel-sysctl".into(), GuardMode::Detect);
    assert_eq!(super::statuses(&detect, &attached(&[], false))[0].effective, GuardMode::Detect);
    // Only some probes as LSM: detections needing another one still only detect.
    let mut partial = every(Kind::Tracepoint);
    partial.retain(|(p, _)| *p != Probe::FileOpen);
    partial.push((Probe::FileOpen, Kind::Lsm));
    let partial = super::statuses(&config, &attached(&partial, false));
    let get = |id: &str| partial.iter().find(|s| s.id == id).unwrap().effective;
    assert_eq!(get("cred.kubelet-pki"), GuardMode::Block);
    assert_eq!(get("escape.kernel-module"), GuardMode::Detect);
}

#[test]
fn a_detection_nothing_can_see_is_unavailable_not_silently_on() {
    let config = GuardConfig::default();
    let none = statuses(&config, &attached(&[], false));
    let get = |id: &str| none.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(get("escape.setns").effective, GuardMode::Off);
    assert!(get("escape.setns").note.starts_with("unavailable"), "{:?}", get("escape.setns"));
    // Hooks every kernel has still refuse their part.
    assert_eq!(get("escape.kernel-sysctl").effective, GuardMode::Block);
    assert_eq!(get("node.foreign-tenant").effective, GuardMode::Block);
}

#[test]
fn runtime_socket_blocks_with_connect_unix_or_lsm() {
    use crate::detections::Probe;
    use crate::kernel::guard_probes::Kind;
    let config = GuardConfig::default();
    let effective = |kinds: &[(Probe, Kind)], connect_unix: bool| {
        let all = statuses(&config, &attached(kinds, connect_unix));
        let status = all.iter().find(|s| s.id == "escape.runtime-socket").unwrap().clone();
        (status.effective, status.note, status.hooks)
    };
    let (mode, note, _) = effective(&every(Kind::Tracepoint), false);
    assert_eq!(mode, GuardMode::Detect);
    assert!(note.contains("cgroup/connect_unix"), "{note}");
    let (mode, note, hooks) = effective(&every(Kind::Tracepoint), true);
    assert_eq!(mode, GuardMode::Block);
    assert!(note.contains("killed"), "{note}");
    assert_eq!(hooks[0], "cgroup/connect_unix");
    assert_eq!(effective(&every(Kind::Lsm), false).0, GuardMode::Block);
    // connect_unix is no BPF LSM: detections that need LSM stay detect-only.
    let all = statuses(&config, &attached(&every(Kind::Tracepoint), true));
    assert_eq!(all.iter().find(|s| s.id == "escape.setns").unwrap().effective, GuardMode::Detect);
}

#[test]
fn only_what_enabled_detections_need_is_wanted() {
    use crate::detections::Probe;
    let all_off: GuardConfig = serde_yaml::from_str(&format!(
        "detections:\n{}",
        DETECTIONS.iter().map(|s| format!("  {}: off\n", s.id)).collect::<String>()
    ))
    .unwrap();
    assert!(wanted(&all_off, true).is_empty());
    let defaults = wanted(&GuardConfig::default(), false);
    assert!(defaults.contains(&Probe::FileOpen) && defaults.contains(&Probe::Setns));
    // mknod is reported by cgroup/dev in block mode; the probe is for detect mode only.
    assert!(!defaults.contains(&Probe::Mknod));
    assert!(!defaults.contains(&Probe::ConnectRefusals), "nothing to report without connect_unix");
    assert!(wanted(&GuardConfig::default(), true).contains(&Probe::ConnectRefusals));
    let mut detect = GuardConfig::default();
    detect.detections.insert("escape.host-mount".into(), GuardMode::Detect);
    assert!(wanted(&detect, false).contains(&Probe::Mknod));
    // Only the kernel-module detection on: its three probes, nothing else.
    let mut only = all_off.clone();
    only.detections.insert("escape.kernel-module".into(), GuardMode::Block);
    assert_eq!(wanted(&only, true).into_iter().collect::<Vec<_>>(), vec![Probe::ModuleLoad, Probe::Bpf, Probe::PerfEvent]);
}

#[test]
fn actors_carry_host_network_and_host_pid() {
    use moat_common::guard::{ACTOR_HOST_NETWORK, ACTOR_HOST_PID};
    let mut index = Index::default();
    let mut cluster = crate::model::Cluster::default();
    for (cgroup, name, host_network, host_pid) in [(1, "plain", false, false), (2, "net", true, false), (3, "pid", false, true)] {
        let key = PodKey::new("ns", name);
        index.pods_by_cgroup.insert(cgroup, key.clone());
        let pod = crate::model::Pod { key: key.clone(), uid: None, labels: Default::default(), ips: vec![], node_name: None, host_network, host_pid, ports: Vec::new().into() };
        cluster.pods.insert(key, pod);
    }
    let actors = kernel_maps::actors(&index, &cluster, &GuardConfig::default(), None);
    assert_eq!([actors[&1].flags, actors[&2].flags, actors[&3].flags], [0, ACTOR_HOST_NETWORK, ACTOR_HOST_PID]);
}
