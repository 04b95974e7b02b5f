//! The resource kinds the test server serves, and the discovery documents for them.

use serde_json::{json, Value};

/// One served resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// Lower-case plural used in URL paths, e.g. `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    /// `Kind` as it appears in objects, e.g. `Pod`.
    pub kind: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
}

impl Kind {
    /// `apiVersion` as written in objects: `v1` or `networking.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of the list object, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Index of this kind in [`KINDS`].
    pub fn index(&self) -> usize {
        KINDS.iter().position(|k| k == self).unwrap_or(0)
    }
}

pub const NAMESPACES: Kind = Kind {
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    group: "",
    version: "v1",
    namespaced: false,
    short_names: &["ns"],
};
pub const NODES: Kind = Kind {
    plural: "nodes",
    singular: "node",
    kind: "Node",
    group: "",
    version: "v1",
    namespaced: false,
    short_names: &["no"],
};
pub const PODS: Kind = Kind {
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["po"],
};
pub const SERVICES: Kind = Kind {
    plural: "services",
    singular: "service",
    kind: "Service",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["svc"],
};
pub const EVENTS: Kind = Kind {
    plural: "events",
    singular: "event",
    kind: "Event",
    group: "",
    version: "v1",
    namespaced: true,
    short_names: &["ev"],
};
pub const NETWORK_POLICIES: Kind = Kind {
    plural: "networkpolicies",
    singular: "networkpolicy",
    kind: "NetworkPolicy",
    group: "networking.k8s.io",
    version: "v1",
    namespaced: true,
    short_names: &["netpol"],
};

/// A custom resource: served only once installed (`POST /testapi/crds/<plural>.<group>` or
/// `--crd`), as a cluster serves a CRD's kind only after the CRD is applied.
pub const CLUSTER_NETWORK_POLICIES: Kind = Kind {
    plural: "clusternetworkpolicies",
    singular: "clusternetworkpolicy",
    kind: "ClusterNetworkPolicy",
    group: "policy.networking.k8s.io",
    version: "v1alpha2",
    namespaced: false,
    short_names: &["cnp"],
};

/// Calico's cluster-wide policy as its CRD stores it: a kind the agent's RBAC does not cover.
pub const CALICO_GLOBAL_NETWORK_POLICIES: Kind = Kind {
    plural: "globalnetworkpolicies",
    singular: "globalnetworkpolicy",
    kind: "GlobalNetworkPolicy",
    group: "crd.projectcalico.org",
    version: "v1",
    namespaced: false,
    short_names: &[],
};

/// Every kind the server knows; those in [`CRDS`] are served only while installed.
pub const KINDS: [Kind; 8] = [NAMESPACES, NODES, PODS, EVENTS, NETWORK_POLICIES, CLUSTER_NETWORK_POLICIES, CALICO_GLOBAL_NETWORK_POLICIES, SERVICES];
/// Kinds that behave as custom resources.
pub const CRDS: [Kind; 2] = [CLUSTER_NETWORK_POLICIES, CALICO_GLOBAL_NETWORK_POLICIES];

/// The custom resource named `<plural>.<group>` (a CRD's name).
pub fn crd_by_name(name: &str) -> Option<Kind> {
    CRDS.iter().copied().find(|k| format!("{}.{}", k.plural, k.group) == name)
}

/// The kind served under `group`/`version` with URL plural `plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// The kind named by an object's `apiVersion` and `kind`.
pub fn by_type(api_version: &str, kind: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.api_version() == api_version && k.kind == kind)
}

pub fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-moat-testapi",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn api_versions_doc(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// `APIGroupList` of the named groups served by `served` kinds.
pub fn api_group_list_doc(served: &[Kind]) -> Value {
    let mut groups: Vec<(&str, &str)> = served.iter().filter(|k| !k.group.is_empty()).map(|k| (k.group, k.version)).collect();
    groups.sort_unstable();
    groups.dedup();
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `APIResourceList` for one group version of the `served` kinds, or `None` if not served.
pub fn api_resource_list_doc(served: &[Kind], group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<Kind> = served
        .iter()
        .copied()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let verbs = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let resources: Vec<Value> = kinds
        .iter()
        .map(|k| {
            json!({
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": verbs,
                "shortNames": k.short_names,
            })
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}
