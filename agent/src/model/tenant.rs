//! Tenant identity. A tenant is the value of a namespace label; a namespace without the label
//! is a tenant of its own. Ids are derived from the name alone, so every node (and every
//! restart of the agent) computes the same id without agreeing on anything.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::labels::intern;
use super::objects::Namespace;

/// Capsule labels every namespace of a tenant with this key, valued with the tenant's name.
pub const CAPSULE_TENANT_LABEL: &str = "capsule.clastix.io/tenant";
/// HNC labels a namespace with `<ancestor>.tree.hnc.x-k8s.io/depth: "<n>"` for itself (0)
/// and every ancestor (n levels up).
pub const HNC_DEPTH_SUFFIX: &str = ".tree.hnc.x-k8s.io/depth";

/// Where a namespace's tenant comes from (config `tenantSource`: `{label: KEY}`,
/// `{capsule: {}}` or `{hnc: {}}`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawTenantSource")]
pub enum TenantSource {
    /// The value of this namespace label.
    Label(String),
    /// Capsule: the `capsule.clastix.io/tenant` label.
    Capsule {},
    /// Hierarchical Namespaces: the root of the namespace's tree, i.e. the ancestor with the
    /// greatest depth label.
    Hnc {},
}

/// The YAML form: a mapping with exactly one key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantSource {
    label: Option<String>,
    capsule: Option<NoOptions>,
    hnc: Option<NoOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

impl TryFrom<RawTenantSource> for TenantSource {
    type Error = String;

    fn try_from(raw: RawTenantSource) -> Result<Self, String> {
        match (raw.label, raw.capsule, raw.hnc) {
            (Some(label), None, None) => Ok(Self::Label(label)),
            (None, Some(_), None) => Ok(Self::Capsule {}),
            (None, None, Some(_)) => Ok(Self::Hnc {}),
            _ => Err("set exactly one of label, capsule or hnc".into()),
        }
    }
}

impl Default for TenantSource {
    fn default() -> Self {
        Self::Label("tenant".into())
    }
}

impl TenantSource {
    /// The tenant of `namespace`; a namespace the source says nothing about is its own.
    pub fn tenant_of(&self, namespace: &Namespace) -> TenantName {
        let named = match self {
            Self::Label(key) => namespace.labels.get(key).map(str::to_string),
            Self::Capsule {} => namespace.labels.get(CAPSULE_TENANT_LABEL).map(str::to_string),
            Self::Hnc {} => hnc_root(namespace),
        };
        match named {
            Some(value) if !value.is_empty() => TenantName::Label(intern(&value)),
            _ => TenantName::OwnNamespace(intern(&namespace.name)),
        }
    }
}

/// The ancestor with the greatest depth among the HNC tree labels (ties: the smaller name,
/// so the answer never depends on map order). Unparsable depths are ignored.
fn hnc_root(namespace: &Namespace) -> Option<String> {
    namespace
        .labels
        .iter()
        .filter_map(|(key, value)| {
            let ancestor = key.strip_suffix(HNC_DEPTH_SUFFIX)?;
            let depth: u32 = value.parse().ok()?;
            (!ancestor.is_empty()).then_some((depth, ancestor))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, ancestor)| ancestor.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantName {
    /// The value of the tenant label. Shared strings: the compiler and the event index keep
    /// a tenant per pod, and a clone is then a count, not an allocation.
    Label(Arc<str>),
    /// A namespace without the tenant label: its own tenant. Printed `ns:<name>`; label values
    /// cannot contain ':', so the two kinds never print alike.
    OwnNamespace(Arc<str>),
}

impl TenantName {
    /// The tenant of `namespace` when tenants come from the label `label_key`.
    pub fn of_namespace(namespace: &Namespace, label_key: &str) -> Self {
        TenantSource::Label(label_key.into()).tenant_of(namespace)
    }

    pub fn id(&self) -> TenantId {
        TenantId::of(self)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(value) => f.write_str(value),
            Self::OwnNamespace(name) => write!(f, "ns:{name}"),
        }
    }
}

/// 64 bits of SHA-256 over the printed name. A cryptographic hash, because tenants choose
/// namespace names: with a weak hash one could pick a name whose id equals another tenant's.
/// The compiler still refuses a model in which two names share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u64);

impl TenantId {
    pub fn of(name: &TenantName) -> Self {
        let digest = Sha256::digest(name.to_string().as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        // 0 means "no tenant" in the maps.
        Self(u64::from_le_bytes(bytes).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn label_decides_tenant_and_unlabelled_namespace_is_its_own() {
        let a = TenantName::of_namespace(&namespace("a", &[("tenant", "acme")]), "tenant");
        let b = TenantName::of_namespace(&namespace("b", &[("tenant", "acme")]), "tenant");
        let c = TenantName::of_namespace(&namespace("c", &[("team", "acme")]), "tenant");
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert_eq!(c, TenantName::OwnNamespace("c".into()));
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn namespace_named_like_a_tenant_is_not_that_tenant() {
        let labelled = TenantName::Label("acme".into());
        let own = TenantName::OwnNamespace("acme".into());
        assert_ne!(labelled.id(), own.id());
        assert_eq!(own.to_string(), "ns:acme");
    }

    #[test]
    fn capsule_tenant_comes_from_its_label() {
        let source = TenantSource::Capsule {};
        let ns = namespace("a", &[(CAPSULE_TENANT_LABEL, "oil"), ("tenant", "other")]);
        assert_eq!(source.tenant_of(&ns), TenantName::Label("oil".into()));
        assert_eq!(source.tenant_of(&namespace("b", &[("tenant", "x")])), TenantName::OwnNamespace("b".into()));
    }

    #[test]
    fn hnc_tenant_is_the_root_of_the_tree() {
        let source = TenantSource::Hnc {};
        let root = namespace("acme", &[("acme.tree.hnc.x-k8s.io/depth", "0")]);
        let child = namespace("team", &[("acme.tree.hnc.x-k8s.io/depth", "1"), ("team.tree.hnc.x-k8s.io/depth", "0")]);
        let grandchild = namespace(
            "dev",
            &[
                ("dev.tree.hnc.x-k8s.io/depth", "0"),
                ("team.tree.hnc.x-k8s.io/depth", "1"),
                ("acme.tree.hnc.x-k8s.io/depth", "2"),
            ],
        );
        for ns in [&root, &child, &grandchild] {
            assert_eq!(source.tenant_of(ns), TenantName::Label("acme".into()), "{}", ns.name);
        }
        let plain = namespace("plain", &[("tenant", "acme")]);
        assert_eq!(source.tenant_of(&plain), TenantName::OwnNamespace("plain".into()));
        let broken = namespace("x", &[("y.tree.hnc.x-k8s.io/depth", "deep")]);
        assert_eq!(source.tenant_of(&broken), TenantName::OwnNamespace("x".into()));
    }

    #[test]
    fn ids_are_stable_across_runs() {
        // Pinned maps outlive the agent; a new agent must derive the very same ids.
        assert_eq!(TenantName::Label("acme".into()).id(), TenantName::Label("acme".into()).id());
        assert_ne!(TenantName::Label("acme".into()).id().0, 0);
    }
}
