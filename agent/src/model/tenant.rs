//! Tenant identity. A tenant is the value of a namespace label; a namespace without the label
//! is a tenant of its own. Ids are derived from the name alone, so every node (and every
//! restart of the agent) computes the same id without agreeing on anything.

use std::fmt;

use sha2::{Digest, Sha256};

use super::Namespace;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantName {
    /// The value of the tenant label.
    Label(String),
    /// A namespace without the tenant label: its own tenant. Printed `ns:<name>`; label values
    /// cannot contain ':', so the two kinds never print alike.
    OwnNamespace(String),
}

impl TenantName {
    /// The tenant of `namespace` when tenants come from the label `label_key`.
    pub fn of_namespace(namespace: &Namespace, label_key: &str) -> Self {
        match namespace.labels.get(label_key) {
            Some(value) if !value.is_empty() => Self::Label(value.clone()),
            _ => Self::OwnNamespace(namespace.name.clone()),
        }
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
    fn ids_are_stable_across_runs() {
        // Pinned maps outlive the agent; a new agent must derive the very same ids.
        assert_eq!(TenantName::Label("acme".into()).id(), TenantName::Label("acme".into()).id());
        assert_ne!(TenantName::Label("acme".into()).id().0, 0);
    }
}
