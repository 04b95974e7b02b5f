//! Which events an observer wants: `moat observe --tenant/--namespace/--pod/--verdict/
//! --detection`. A flow matches a tenant, namespace or pod filter on either end.

use serde::{Deserialize, Serialize};

use super::deny::End;
use super::record::{Event, Payload};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    /// `namespace/pod`.
    pub pod: Option<String>,
    /// `deny` or `allow`: flows only.
    pub verdict: Option<String>,
    /// A detection id: detections only.
    pub detection: Option<String>,
}

fn end_matches(end: &End, tenant: Option<&str>, namespace: Option<&str>, pod: Option<(&str, &str)>) -> bool {
    tenant.is_none_or(|t| end.tenant.as_deref() == Some(t))
        && namespace.is_none_or(|n| end.namespace.as_deref() == Some(n))
        && pod.is_none_or(|(n, p)| end.namespace.as_deref() == Some(n) && end.pod.as_deref() == Some(p))
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        let pod = self.pod.as_deref().and_then(|p| p.split_once('/'));
        if self.pod.is_some() && pod.is_none() {
            return false;
        }
        let tenant = self.tenant.as_deref();
        let namespace = self.namespace.as_deref();
        match &event.payload {
            Payload::Flow(flow) => {
                self.detection.is_none()
                    && self.verdict.as_deref().is_none_or(|v| v == flow.verdict)
                    && (end_matches(&flow.src, tenant, namespace, pod) || end_matches(&flow.dst, tenant, namespace, pod))
            }
            Payload::Detection(detection) => {
                self.verdict.is_none()
                    && self.detection.as_deref().is_none_or(|d| d == detection.id)
                    && tenant.is_none_or(|t| detection.tenant.as_deref() == Some(t))
                    && namespace.is_none_or(|n| detection.namespace.as_deref() == Some(n))
                    && pod.is_none_or(|(n, p)| {
                        detection.namespace.as_deref() == Some(n) && detection.pod.as_deref() == Some(p)
                    })
            }
            // Losses of the events the filter asks for: a tenant's (or a pod's) flows of the
            // verdict, detections of the id; the node's own only when nothing is narrowed.
            Payload::Dropped(dropped) => {
                self.verdict.as_deref().is_none_or(|v| v == dropped.events)
                    && self.detection.as_deref().is_none_or(|d| Some(d) == dropped.detection)
                    && tenant.is_none_or(|t| dropped.tenant.as_deref() == Some(t))
                    && namespace.is_none_or(|n| dropped.namespace.as_deref() == Some(n))
                    && pod.is_none_or(|(n, p)| {
                        dropped.namespace.as_deref() == Some(n) && dropped.pod.as_deref() == Some(p)
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::deny::DenyRecord;
    use crate::events::record::Detection;

    fn end(tenant: &str, namespace: &str, pod: &str) -> End {
        End { tenant: Some(tenant.into()), namespace: Some(namespace.into()), pod: Some(pod.into()), ip: None, port: 80 }
    }

    fn flow() -> Event {
        Event::new(Payload::Flow(DenyRecord {
            verdict: "deny",
            direction: "egress",
            hook: "connect",
            protocol: "TCP".into(),
            rule: "tenant-floor",
            policies: Vec::new(),
            src: end("alpha", "a1", "web"),
            dst: end("beta", "b1", "db"),
        }))
    }

    fn filter(f: impl FnOnce(&mut Filter)) -> Filter {
        let mut filter = Filter::default();
        f(&mut filter);
        filter
    }

    #[test]
    fn flows_match_on_either_end() {
        let event = flow();
        assert!(Filter::default().matches(&event));
        assert!(filter(|f| f.tenant = Some("beta".into())).matches(&event));
        assert!(filter(|f| f.tenant = Some("alpha".into())).matches(&event));
        assert!(!filter(|f| f.tenant = Some("gamma".into())).matches(&event));
        assert!(filter(|f| f.namespace = Some("a1".into())).matches(&event));
        assert!(filter(|f| f.pod = Some("b1/db".into())).matches(&event));
        assert!(!filter(|f| f.pod = Some("b1/web".into())).matches(&event));
        assert!(!filter(|f| f.pod = Some("nopod".into())).matches(&event));
        assert!(filter(|f| f.verdict = Some("deny".into())).matches(&event));
        assert!(!filter(|f| f.verdict = Some("allow".into())).matches(&event));
        assert!(!filter(|f| f.detection = Some("x".into())).matches(&event));
        // Filters combine on the same end: tenant alpha and namespace b1 match no single end.
        assert!(!filter(|f| {
            f.tenant = Some("alpha".into());
            f.namespace = Some("b1".into());
        })
        .matches(&event));
    }

    #[test]
    fn detections_match_by_id_and_place() {
        let event = Event::new(Payload::Detection(Detection {
            id: "exec-shell".into(),
            mode: "audit".into(),
            tenant: Some("alpha".into()),
            namespace: Some("a1".into()),
            pod: Some("web".into()),
            message: "sh".into(),
            ..Detection::default()
        }));
        assert!(filter(|f| f.detection = Some("exec-shell".into())).matches(&event));
        assert!(!filter(|f| f.detection = Some("other".into())).matches(&event));
        assert!(filter(|f| f.pod = Some("a1/web".into())).matches(&event));
        assert!(!filter(|f| f.verdict = Some("deny".into())).matches(&event));
    }

    #[test]
    fn losses_match_their_tenant_and_kind() {
        use crate::events::losses::{Kind, LossKey, Named, Owner, Reason};
        let mut index = crate::compiler::Index::default();
        let beta = crate::model::TenantName::Label("beta".into());
        index.tenants.insert(beta.id().0, beta.clone());
        let key = LossKey::userspace(Owner::Tenant(beta.id().0), Kind::Deny, Reason::QueueFull);
        let event = Event::new(Payload::Dropped(Named::new(&key, Some(&index))));
        assert!(Filter::default().matches(&event));
        assert!(filter(|f| f.tenant = Some("beta".into())).matches(&event));
        assert!(!filter(|f| f.tenant = Some("alpha".into())).matches(&event));
        assert!(filter(|f| f.verdict = Some("deny".into())).matches(&event));
        assert!(!filter(|f| f.verdict = Some("allow".into())).matches(&event));
        assert!(!filter(|f| f.detection = Some("escape.host-mount".into())).matches(&event));
        assert!(!filter(|f| f.namespace = Some("b1".into())).matches(&event));
    }
}
