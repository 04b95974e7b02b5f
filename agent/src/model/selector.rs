//! Label selectors (the full version lands with the manifests source).
use super::Labels;

/// matchLabels semantics: every pair must be present.
pub fn matches_labels(match_labels: &Labels, labels: &Labels) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}
