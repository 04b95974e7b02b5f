//! Policy objects moat does not enforce, so that none is ever ignored without a word.
//!
//! An admin who applies a ClusterNetworkPolicy, a Calico GlobalNetworkPolicy or a
//! CiliumNetworkPolicy on a node moat guards must not believe it is enforced. Every source
//! reports the objects of policy-like kinds it saw but does not feed the model; the agent
//! warns about them, counts them (`moat_unenforced_policies`), lists them in `moat status`,
//! and `moat explain` marks its verdicts incomplete while any exist.
//!
//! "Policy-like" is decided here and nowhere else: the kinds in [`KNOWN`], plus any kind with
//! `Policy` in its name from an API group not in [`NOT_NETWORK_GROUPS`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;


/// Network-policy kinds of other API groups or versions, by (group, kind). Kinds with
/// `Policy` in their name would be caught anyway; they are listed so the list documents what
/// is known to exist, and for the ones without it (OVN-Kubernetes' EgressFirewall).
pub const KNOWN: &[(&str, &str)] = &[
    // Kubernetes SIG-Network's cluster-scoped tiers (v1alpha1 and v1alpha2).
    ("policy.networking.k8s.io", "ClusterNetworkPolicy"),
    ("policy.networking.k8s.io", "AdminNetworkPolicy"),
    ("policy.networking.k8s.io", "BaselineAdminNetworkPolicy"),
    // Calico (the v3 API server and its CRD storage).
    ("projectcalico.org", "NetworkPolicy"),
    ("projectcalico.org", "GlobalNetworkPolicy"),
    ("projectcalico.org", "StagedNetworkPolicy"),
    ("projectcalico.org", "StagedGlobalNetworkPolicy"),
    ("projectcalico.org", "StagedKubernetesNetworkPolicy"),
    ("crd.projectcalico.org", "NetworkPolicy"),
    ("crd.projectcalico.org", "GlobalNetworkPolicy"),
    // Cilium.
    ("cilium.io", "CiliumNetworkPolicy"),
    ("cilium.io", "CiliumClusterwideNetworkPolicy"),
    // Antrea.
    ("crd.antrea.io", "NetworkPolicy"),
    ("crd.antrea.io", "ClusterNetworkPolicy"),
    // OVN-Kubernetes.
    ("k8s.ovn.org", "EgressFirewall"),
    // Multus' multi-network policies.
    ("k8s.cni.cncf.io", "MultiNetworkPolicy"),
];

/// Groups whose `...Policy` kinds are not about network traffic (admission, pod security,
/// disruption budgets, policy engines' reports), so they are not reported.
pub const NOT_NETWORK_GROUPS: &[&str] = &[
    "admissionregistration.k8s.io",
    "policy",
    "kyverno.io",
    "wgpolicyk8s.io",
    "templates.gatekeeper.sh",
    "constraints.gatekeeper.sh",
    "config.gatekeeper.sh",
];

/// A kind of policy object moat does not enforce: its API group and kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyKind {
    pub group: String,
    pub kind: String,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{} ({})", self.kind, self.group)
        }
    }
}

/// The API group of an `apiVersion` (`""` for the core group's `v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Whether an object of `kind` in `group` is a policy moat does not enforce. Only
/// `networking.k8s.io/v1` NetworkPolicy is enforced; its other versions are the same objects
/// (the sources refuse or never ask for them), so they are not policies of another kind.
pub fn classify(group: &str, kind: &str) -> Option<PolicyKind> {
    let enforced = kind == "NetworkPolicy" && matches!(group, "networking.k8s.io" | "extensions");
    let known = KNOWN.iter().any(|(g, k)| *g == group && *k == kind);
    let looks_like = kind.contains("Policy") && !group.is_empty() && !NOT_NETWORK_GROUPS.contains(&group);
    (!enforced && (known || looks_like)).then(|| PolicyKind { group: group.into(), kind: kind.into() })
}

/// One unenforced object: its kind, version and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PolicyObject {
    pub kind: PolicyKind,
    pub version: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = &self.kind.group;
        let api_version = if group.is_empty() { self.version.clone() } else { format!("{group}/{}", self.version) };
        write!(f, "{} ", self.kind.kind)?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{} ({api_version})", self.name)
    }
}

/// Every policy object a source saw and does not enforce, and the policy kinds the API server
/// serves whose objects the agent may not list (it cannot tell whether any exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unenforced {
    pub objects: BTreeSet<PolicyObject>,
    /// Kind → why its objects are unknown (e.g. `list forbidden: ...`).
    pub unlisted: BTreeMap<PolicyKind, String>,
}

impl Unenforced {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.unlisted.is_empty()
    }

    /// Objects per kind.
    pub fn counts(&self) -> BTreeMap<&PolicyKind, usize> {
        let mut counts = BTreeMap::new();
        for object in &self.objects {
            *counts.entry(&object.kind).or_default() += 1;
        }
        counts
    }

    /// One line per object and per unlisted kind, for logs, status and explain.
    pub fn lines(&self) -> Vec<String> {
        let objects = self.objects.iter().map(ToString::to_string);
        let unlisted = self.unlisted.iter().map(|(kind, why)| format!("{kind}: served by the API server, objects unknown ({why})"));
        objects.chain(unlisted).collect()
    }

    /// What appeared and what went away since `before`.
    pub fn diff(&self, before: &Unenforced) -> (Vec<String>, Vec<String>) {
        let appeared = self.objects.difference(&before.objects).map(ToString::to_string);
        let unlisted = self.unlisted.keys().filter(|kind| !before.unlisted.contains_key(*kind)).map(|kind| format!("{kind} (objects unknown)"));
        let gone = before.objects.difference(&self.objects).map(ToString::to_string);
        let relisted = before.unlisted.keys().filter(|kind| !self.unlisted.contains_key(*kind)).map(|kind| format!("{kind} (objects unknown)"));
        (appeared.chain(unlisted).collect(), gone.chain(relisted).collect())
    }
}

/// Logs what changed since the last report: a warning naming every unenforced object at
/// start (`before` is None) and whenever the set changes, and when the last one is gone.
pub fn log_change(before: Option<&Unenforced>, now: &Unenforced) {
    if before == Some(now) || (before.is_none() && now.is_empty()) {
        return;
    }
    let (appeared, gone) = now.diff(before.unwrap_or(&Unenforced::default()));
    if now.is_empty() {
        tracing::info!(?gone, "no policy objects moat does not enforce remain");
        return;
    }
    tracing::warn!(
        unenforced = ?now.lines(),
        ?appeared,
        ?gone,
        "policy objects of kinds moat does NOT enforce exist; traffic is decided without them"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(group: &str, kind: &str, namespace: &str, name: &str) -> PolicyObject {
        PolicyObject { kind: PolicyKind { group: group.into(), kind: kind.into() }, version: "v1".into(), namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn policy_kinds_are_classified_in_one_place() {
        for (group, kind) in KNOWN {
            assert!(classify(group, kind).is_some(), "{group} {kind}");
        }
        assert_eq!(classify("policy.networking.k8s.io", "ClusterNetworkPolicy").unwrap().to_string(), "ClusterNetworkPolicy (policy.networking.k8s.io)");
        // Unknown vendors' policy kinds count; what moat enforces and non-network policies do not.
        assert!(classify("security.example.com", "TenantEgressPolicy").is_some());
        assert!(classify("networking.k8s.io", "NetworkPolicy").is_none());
        assert!(classify("extensions", "NetworkPolicy").is_none());
        assert!(classify("admissionregistration.k8s.io", "ValidatingAdmissionPolicy").is_none());
        assert!(classify("policy", "PodSecurityPolicy").is_none());
        assert!(classify("kyverno.io", "ClusterPolicy").is_none());
        assert!(classify("", "ConfigMap").is_none());
        assert!(classify("apps", "Deployment").is_none());
        assert!(classify("example.com", "Widget").is_none());
    }

    #[test]
    fn counts_lines_and_diffs() {
        let mut before = Unenforced::default();
        before.objects.insert(object("cilium.io", "CiliumNetworkPolicy", "n", "a"));
        let mut now = before.clone();
        now.objects.insert(object("cilium.io", "CiliumNetworkPolicy", "n", "b"));
        now.objects.remove(&object("cilium.io", "CiliumNetworkPolicy", "n", "a"));
        let kind = PolicyKind { group: "projectcalico.org".into(), kind: "GlobalNetworkPolicy".into() };
        now.unlisted.insert(kind, "list forbidden".into());
        let cilium = PolicyKind { group: "cilium.io".into(), kind: "CiliumNetworkPolicy".into() };
        assert_eq!(now.counts(), [(&cilium, 1)].into());
        assert_eq!(
            now.lines(),
            vec![
                "CiliumNetworkPolicy n/b (cilium.io/v1)".to_string(),
                "GlobalNetworkPolicy (projectcalico.org): served by the API server, objects unknown (list forbidden)".to_string(),
            ]
        );
        let (appeared, gone) = now.diff(&before);
        assert_eq!(appeared, vec!["CiliumNetworkPolicy n/b (cilium.io/v1)", "GlobalNetworkPolicy (projectcalico.org) (objects unknown)"]);
        assert_eq!(gone, vec!["CiliumNetworkPolicy n/a (cilium.io/v1)"]);
        assert!(!now.is_empty());
        assert!(Unenforced::default().is_empty());
    }
}
