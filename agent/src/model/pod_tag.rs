//! A pod's tag: the 64-bit name by which the guard's maps (actors, volume owners) and the
//! compiler's foreign-pod entries know a pod, stable for the pod's life.

use sha2::{Digest, Sha256};

/// A pod's tag in the guard maps: 64 bits of SHA-256 of its uid (the kubelet names volume
/// directories by uid), or of namespace/name when the pod has no uid.
pub fn pod_tag(uid: Option<&str>, namespace: &str, name: &str) -> u64 {
    let mut hash = Sha256::new();
    match uid {
        Some(uid) => hash.update(format!("uid:{uid}")),
        None => hash.update(format!("pod:{namespace}/{name}")),
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::pod_tag;

    #[test]
    fn pod_tags_are_stable_nonzero_and_distinct() {
        assert_eq!(pod_tag(Some("u1"), "a", "b"), pod_tag(Some("u1"), "x", "y"));
        assert_ne!(pod_tag(Some("u1"), "", ""), pod_tag(Some("u2"), "", ""));
        assert_ne!(pod_tag(None, "a", "b"), pod_tag(None, "a", "c"));
        assert_ne!(pod_tag(None, "a", "b"), 0);
    }
}
