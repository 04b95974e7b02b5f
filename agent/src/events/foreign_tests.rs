use super::*;

fn profile(tenant: &str, mode: GuardMode) -> NodeProfile {
    NodeProfile { label: "node-restriction.kubernetes.io/tenant".into(), tenant: tenant.into(), mode }
}

fn foreign(profile: Option<NodeProfile>, pods: &[(&str, &str, &str)]) -> Foreign {
    let pods = pods.iter().map(|(ns, name, tenant)| (PodKey::new(*ns, *name), TenantName::Label((*tenant).into()))).collect();
    Foreign { profile, pods }
}

fn names(detections: &[Detection]) -> Vec<String> {
    detections.iter().map(|d| format!("{}/{}", d.namespace.as_deref().unwrap_or("?"), d.pod.as_deref().unwrap_or("?"))).collect()
}

#[test]
fn reports_each_pod_once_when_it_becomes_foreign() {
    let alpha = Some(profile("alpha", GuardMode::Block));
    let first = foreign(alpha.clone(), &[("b1", "r", "beta")]);
    let reported = newly_foreign(&Foreign::default(), &first);
    assert_eq!(names(&reported), ["b1/r"]);
    let detection = &reported[0];
    assert_eq!(detection.id, "node.foreign-tenant");
    assert_eq!((detection.mode.as_str(), detection.action.as_str()), ("block", "blocked"));
    assert_eq!(detection.severity, "high");
    assert_eq!(detection.tenant.as_deref(), Some("beta"));
    assert_eq!(detection.evidence.as_deref(), Some("node label node-restriction.kubernetes.io/tenant=alpha"));
    assert!(detection.message.contains("b1/r of tenant beta") && detection.message.contains("reserved for tenant alpha"), "{}", detection.message);

    assert!(newly_foreign(&first, &first).is_empty(), "not again on the next reconcile");
    let second = foreign(alpha.clone(), &[("b1", "r", "beta"), ("b1", "s", "beta")]);
    assert_eq!(names(&newly_foreign(&first, &second)), ["b1/s"], "a new pod");
    let moved = foreign(alpha, &[("b1", "r", "gamma")]);
    assert_eq!(names(&newly_foreign(&first, &moved)), ["b1/r"], "its namespace moved to another tenant");
    let relabelled = foreign(Some(profile("delta", GuardMode::Block)), &[("b1", "r", "beta")]);
    assert_eq!(names(&newly_foreign(&first, &relabelled)), ["b1/r"], "the node was relabelled");
    assert!(newly_foreign(&first, &Foreign::default()).is_empty(), "unlabelled: nothing to report");
    assert_eq!(names(&newly_foreign(&Foreign::default(), &first)), ["b1/r"], "foreign again after that");
}

#[test]
fn detect_mode_says_detected_and_status_lists_the_pods() {
    let detect = foreign(Some(profile("alpha", GuardMode::Detect)), &[("b1", "r", "beta")]);
    let reported = newly_foreign(&Foreign::default(), &detect);
    assert_eq!((reported[0].mode.as_str(), reported[0].action.as_str()), ("detect", "detected"));
    let shown = status(&detect);
    assert_eq!(shown.node_profile.as_deref(), Some("node-restriction.kubernetes.io/tenant=alpha"));
    assert_eq!(shown.mode, Some(GuardMode::Detect));
    assert_eq!(shown.pods, ["b1/r (beta)"]);
    assert_eq!(status(&Foreign::default()), ForeignStatus::default());
}
