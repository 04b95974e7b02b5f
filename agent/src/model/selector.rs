//! Kubernetes label selectors (`metav1.LabelSelector`), evaluated exactly as the API server's
//! `LabelSelectorAsSelector` does: `matchLabels` and every `matchExpressions` entry must all
//! hold; an empty selector selects everything. An invalid selector is an error, never "matches
//! nothing", so a policy the API server would reject is rejected here too instead of quietly
//! selecting fewer pods than its author meant.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::labels::Labels;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{field}: operator {operator} on key {key:?} needs at least one value")]
    MissingValues {
        field: String,
        key: String,
        operator: String,
    },
    #[error("{field}: operator {operator} on key {key:?} takes no values, got {count}")]
    UnexpectedValues {
        field: String,
        key: String,
        operator: String,
        count: usize,
    },
    #[error(
        "{field}: unknown operator {operator:?} on key {key:?} (want In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator {
        field: String,
        key: String,
        operator: String,
    },
    #[error("{field}: invalid label key {key:?}: {reason}")]
    InvalidKey {
        field: String,
        key: String,
        reason: &'static str,
    },
    #[error("{field}: invalid label value {value:?}: {reason}")]
    InvalidValue {
        field: String,
        value: String,
        reason: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// True when every `matchLabels` entry is present with the same value.
pub fn matches_labels(match_labels: &Labels, labels: &Labels) -> bool {
    match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Checks the selector the way the API server does. Field paths in errors are relative to
/// the selector (`matchExpressions[1]`), for the caller to prefix.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (key, value) in selector.match_labels.iter().flatten() {
        let field = format!("matchLabels.{key}");
        check_key(key, &field)?;
        check_value(value, &field)?;
    }
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        operator(requirement, index)?;
    }
    Ok(())
}

/// Whether `labels` satisfy `selector`. The whole selector is validated first, so the answer
/// for an invalid selector is an error whatever the labels are.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> Result<bool, SelectorError> {
    Selector::from_api(selector).map(|selector| selector.matches(labels))
}

/// A label selector checked once and kept compactly: what a NetworkPolicy's selectors are
/// evaluated as, for every pod, on every change. A selector in the API's form costs a B-tree
/// node per `matchLabels` (about half a kilobyte, however few labels it names) and is
/// re-validated on each evaluation; this one is a few small allocations and cannot be invalid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Box<[(Box<str>, Box<str>)]>,
    requirements: Box<[Requirement]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: Box<str>,
    operator: Operator,
    values: Box<[Box<str>]>,
}

impl Selector {
    /// Checks `selector` as the API server does; errors name the field within it.
    pub fn from_api(selector: &LabelSelector) -> Result<Self, SelectorError> {
        validate(selector)?;
        let labels = selector.match_labels.iter().flatten().map(|(key, value)| (key.as_str().into(), value.as_str().into())).collect();
        let mut requirements = Vec::new();
        for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
            requirements.push(Requirement {
                key: requirement.key.as_str().into(),
                operator: operator(requirement, index)?,
                values: requirement.values.iter().flatten().map(|value| value.as_str().into()).collect(),
            });
        }
        Ok(Self { labels, requirements: requirements.into_boxed_slice() })
    }

    /// Whether `labels` satisfy every `matchLabels` entry and every expression.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(key, value)| labels.get(key) == Some(&**value))
            && self.requirements.iter().all(|requirement| {
                let value = labels.get(&requirement.key);
                let listed = |value: &str| requirement.values.iter().any(|v| **v == *value);
                match requirement.operator {
                    Operator::In => value.is_some_and(listed),
                    // Kubernetes: NotIn also selects objects that do not have the key at all.
                    Operator::NotIn => value.is_none_or(|value| !listed(value)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Validates one requirement and returns its operator.
fn operator(
    requirement: &LabelSelectorRequirement,
    index: usize,
) -> Result<Operator, SelectorError> {
    let field = format!("matchExpressions[{index}]");
    let key = requirement.key.clone();
    check_key(&key, &format!("{field}.key"))?;
    let values = requirement.values.as_deref().unwrap_or_default();
    let operator = match requirement.operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(SelectorError::UnknownOperator {
                field,
                key,
                operator: other.into(),
            })
        }
    };
    let operator_name = || requirement.operator.clone();
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => Err(SelectorError::MissingValues {
            field,
            key,
            operator: operator_name(),
        }),
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            Err(SelectorError::UnexpectedValues {
                field,
                key,
                operator: operator_name(),
                count: values.len(),
            })
        }
        _ => {
            for (value_index, value) in values.iter().enumerate() {
                check_value(value, &format!("{field}.values[{value_index}]"))?;
            }
            Ok(operator)
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name (Kubernetes
/// `IsQualifiedName`).
fn check_key(key: &str, field: &str) -> Result<(), SelectorError> {
    let invalid = |reason| SelectorError::InvalidKey {
        field: field.into(),
        key: key.into(),
        reason,
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !is_dns_subdomain(prefix) {
                return Err(invalid(
                    "prefix must be a DNS subdomain of at most 253 characters",
                ));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return Err(invalid(
            "name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        ));
    }
    Ok(())
}

/// A label value: empty, or a name as in `check_key` (Kubernetes `IsValidLabelValue`).
fn check_value(value: &str, field: &str) -> Result<(), SelectorError> {
    if value.is_empty() || (value.len() <= 63 && is_label_name(value)) {
        return Ok(());
    }
    Err(SelectorError::InvalidValue {
        field: field.into(),
        value: value.into(),
        reason:
            "must be empty or 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
    })
}

fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge_ok = |byte: Option<&u8>| byte.is_some_and(u8::is_ascii_alphanumeric);
    edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(text: &str) -> bool {
    text.split('.').all(|part| {
        let bytes = part.as_bytes();
        let edge_ok =
            |byte: Option<&u8>| byte.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    })
}

#[cfg(test)]
#[path = "selector_tests.rs"]
mod tests;
