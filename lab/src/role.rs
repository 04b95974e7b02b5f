//! Pod roles, set by the annotation `lab.moat.dev/role` on a Pod manifest:
//!
//! * `pod` (default): an ordinary pod, known to the agent.
//! * `external`: a host that is not a pod. It gets a netns on the bridge and a server like any
//!   pod, but its cgroup is outside the pods' root (`<cgroup2>/moat-lab-<name>-external`) and
//!   it is left out of the agent's `cluster.json`: to the agent its address is unknown.
//! * `hidden`: a pod the agent has not heard of yet. Its cgroup is below the pods' root, but
//!   it is left out of `cluster.json`, so the agent sees a *pending* cgroup.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const ANNOTATION: &str = "lab.moat.dev/role";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Pod,
    External,
    Hidden,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::External => "external",
            Self::Hidden => "hidden",
        }
    }

    /// Whether the agent's manifests copy lists the pod.
    pub fn visible_to_agent(self) -> bool {
        self == Self::Pod
    }

    /// Whether the pod's cgroup is below the lab's pods' root.
    pub fn in_pods_root(self) -> bool {
        self != Self::External
    }
}

/// The role of a Pod object; an error text naming the field when the annotation holds
/// something else than `pod`, `external` or `hidden`.
pub fn role_of(pod: &Value) -> Result<Role, String> {
    let Some(value) = pod["metadata"]["annotations"].get(ANNOTATION) else {
        return Ok(Role::Pod);
    };
    match value.as_str() {
        Some("pod") => Ok(Role::Pod),
        Some("external") => Ok(Role::External),
        Some("hidden") => Ok(Role::Hidden),
        _ => Err(format!(
            "field metadata.annotations.{ANNOTATION}: {value} is not one of pod, external, hidden"
        )),
    }
}

/// The objects the lab's agent may see: every object except Pods whose role hides them.
/// Pods with an invalid role were rejected when the manifests were read; here they count as
/// pods.
pub fn agent_items(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|item| {
            item["kind"] != "Pod" || role_of(item).unwrap_or_default().visible_to_agent()
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, role: Option<&str>) -> Value {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "x"}});
        if let Some(role) = role {
            pod["metadata"]["annotations"] = json!({ ANNOTATION: role, "other": "1" });
        }
        pod
    }

    #[test]
    fn roles_are_read_from_the_annotation() {
        assert_eq!(role_of(&pod("a", None)), Ok(Role::Pod));
        assert_eq!(role_of(&pod("a", Some("pod"))), Ok(Role::Pod));
        assert_eq!(role_of(&pod("a", Some("external"))), Ok(Role::External));
        assert_eq!(role_of(&pod("a", Some("hidden"))), Ok(Role::Hidden));
        let error = role_of(&pod("a", Some("Hidden"))).unwrap_err();
        assert!(
            error.contains("metadata.annotations.lab.moat.dev/role"),
            "{error}"
        );
        let mut number = pod("a", None);
        number["metadata"]["annotations"] = json!({ ANNOTATION: 1 });
        assert!(role_of(&number).is_err());
    }

    #[test]
    fn agent_items_leave_out_external_and_hidden_pods_only() {
        let namespace = json!({"kind": "Namespace", "metadata": {"name": "x"}});
        // A non-pod object carrying the annotation is not filtered.
        let config = json!({"kind": "ConfigMap", "metadata": {"name": "cm", "annotations": {ANNOTATION: "hidden"}}});
        let items = vec![
            namespace,
            pod("a", None),
            pod("b", Some("external")),
            pod("c", Some("hidden")),
            pod("d", Some("pod")),
            config,
        ];
        let kept = agent_items(&items);
        let names: Vec<&str> = kept
            .iter()
            .map(|item| item["metadata"]["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["x", "a", "d", "cm"]);
        // Kept objects are unchanged.
        assert_eq!(kept[2], items[4]);
    }

    #[test]
    fn roles_place_cgroups_and_visibility() {
        assert!(Role::Pod.visible_to_agent() && Role::Pod.in_pods_root());
        assert!(!Role::Hidden.visible_to_agent() && Role::Hidden.in_pods_root());
        assert!(!Role::External.visible_to_agent() && !Role::External.in_pods_root());
        assert_eq!(
            serde_json::to_value(Role::External).unwrap(),
            json!("external")
        );
        assert_eq!(Role::default(), Role::Pod);
    }
}
