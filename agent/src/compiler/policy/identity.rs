//! Content-derived ids. Like tenant ids they are the same on every node and across agent
//! restarts, and an id always means the same content, so adopted maps stay consistent while
//! they are reconciled.

use sha2::{Digest, Sha256};

use moat_common::maps::{NetworkKey, IDENTITY_ANY, NOT_ISOLATED};

use crate::model::{ContainerPort, Labels};

/// 64 bits of SHA-256 over `parts`, never 0 (none) or `IDENTITY_ANY`.
pub fn hash_id(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    match u64::from_le_bytes(bytes) {
        NOT_ISOLATED | IDENTITY_ANY => 1,
        id => id,
    }
}

/// A pod's peer identity: namespace, labels and named ports (egress rules resolve named
/// ports on the destination, so pods that name ports differently must not share an id).
pub fn pod_identity(namespace: &str, labels: &Labels, ports: &[ContainerPort]) -> u64 {
    let labels: Vec<u8> = labels.iter().flat_map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat()).collect();
    let named = named_ports_bytes(ports);
    hash_id(&[b"pod", namespace.as_bytes(), &labels, &named])
}

pub fn cidr_identity(key: &NetworkKey) -> u64 {
    hash_id(&[b"cidr", &key.prefix_len.to_le_bytes(), &key.addr])
}

/// Named ports, sorted, as bytes (for hashing).
pub fn named_ports_bytes(ports: &[ContainerPort]) -> Vec<u8> {
    let mut named: Vec<String> = ports
        .iter()
        .filter_map(|p| p.name.as_ref().map(|name| format!("{name}/{}={}", p.protocol, p.port)))
        .collect();
    named.sort();
    named.join(",").into_bytes()
}
