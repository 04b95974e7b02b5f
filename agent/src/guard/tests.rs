use super::*;
use crate::model::{PodKey, TenantName};
use moat_common::event::{COMM_LEN, SUBJECT_LEN};

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

#[test]
fn decodes_a_blocked_write_naming_the_pod() {
    let mut index = Index::default();
    let pod = PodKey::new("alpha-web", "api");
    index.pods_by_cgroup.insert(42, pod.clone());
    index.pod_tenants.insert(pod, TenantName::Label("alpha".into()));
    let event = GuardEvent {
        detection: DETECTION_KERNEL_SYSCTL as u8,
        blocked: 1,
        cgroup: 42,
        pid: 101,
        tgid: 100,
        comm: padded::<COMM_LEN>("sh"),
        subject: padded::<SUBJECT_LEN>("kernel/core_pattern"),
        ..GuardEvent::default()
    };
    let detection = decode(&event, &index);
    assert_eq!(detection.id, "escape.kernel-sysctl");
    assert_eq!(detection.severity, "critical");
    assert_eq!(detection.mode, "block");
    assert_eq!(detection.action, "blocked");
    assert_eq!(detection.tenant.as_deref(), Some("alpha"));
    assert_eq!(detection.namespace.as_deref(), Some("alpha-web"));
    assert_eq!(detection.pod.as_deref(), Some("api"));
    assert_eq!(detection.pid, Some(100));
    assert_eq!(detection.executable.as_deref(), Some("sh"));
    assert_eq!(detection.evidence.as_deref(), Some("/proc/sys/kernel/core_pattern"));
}

#[test]
fn an_unknown_cgroup_is_still_reported() {
    let event = GuardEvent {
        detection: DETECTION_KERNEL_SYSCTL as u8,
        subject: padded::<SUBJECT_LEN>("kernel/modprobe"),
        ..GuardEvent::default()
    };
    let detection = decode(&event, &Index::default());
    assert_eq!(detection.action, "detected");
    assert_eq!(detection.pod, None);
    assert_eq!(detection.evidence.as_deref(), Some("/proc/sys/kernel/modprobe"));
}

#[test]
fn default_is_block_and_falls_back_to_detect_without_lsm() {
    let config = GuardConfig::default();
    let statuses = statuses(&config, false);
    assert_eq!(statuses.len(), DETECTIONS.len());
    let get = |id: &str| statuses.iter().find(|s| s.id == id).unwrap();
    assert!(statuses.iter().all(|s| s.configured == GuardMode::Block));
    assert_eq!(get("escape.kernel-sysctl").effective, GuardMode::Block);
    assert_eq!(get("escape.setns").effective, GuardMode::Detect);
    assert!(get("escape.setns").note.contains("BPF LSM"), "{}", get("escape.setns").note);
    let with_lsm = super::statuses(&config, true);
    assert!(with_lsm.iter().all(|s| s.effective == GuardMode::Block));
    let mut detect = GuardConfig::default();
    detect.detections.insert("escape.kernel-sysctl".into(), GuardMode::Detect);
    assert_eq!(super::statuses(&detect, false)[0].effective, GuardMode::Detect);
}

#[test]
fn config_spelling() {
    let config: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctl: detect").unwrap();
    assert_eq!(config.mode(&registry::KERNEL_SYSCTL), GuardMode::Detect);
    assert_eq!(config.mode(&registry::SETNS), GuardMode::Block);
    assert!(serde_yaml::from_str::<GuardConfig>("detections:\n  escape.kernel-sysctl: maybe").is_err());
    assert!(serde_yaml::from_str::<GuardConfig>("kernelSysctl: block").is_err());
    let unknown: GuardConfig = serde_yaml::from_str("detections:\n  escape.kernel-sysctls: block").unwrap();
    let (field, message) = unknown.validate().unwrap_err();
    assert_eq!(field, "guard.detections.escape.kernel-sysctls");
    assert!(message.contains("escape.kernel-sysctl,"), "{message}");
    let relative: GuardConfig = serde_yaml::from_str("runtime:\n  sockets: [run/x.sock]").unwrap();
    assert_eq!(relative.validate().unwrap_err().0, "guard.runtime.sockets[0]");
    let server: GuardConfig = serde_yaml::from_str("apiServers: [\"10.0.0.1\"]").unwrap();
    assert_eq!(server.validate().unwrap_err().0, "guard.apiServers[0]");
}
