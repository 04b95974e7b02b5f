//! Lists: consistent snapshots at a resourceVersion, selectors, limit/continue.

use crate::error::ApiError;
use crate::kinds::Kind;
use crate::selector::Selectors;
use crate::store::{ChangeType, Key, State, Store};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

/// What a list request asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Restrict to one namespace (namespaced kinds only).
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// Page size; `None` or 0 means everything.
    pub limit: Option<usize>,
    /// Opaque token from a previous page.
    pub continue_token: Option<String>,
}

const EXPIRED_CONTINUE: &str =
    "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter.";

fn encode_token(rv: u64, key: &Key) -> String {
    let raw = format!("{rv}/{}/{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token:?}"));
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, '/');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

/// The objects of `kind` as they were at `rv`, rebuilt from history.
pub(crate) fn objects_at(
    st: &State,
    kind: Kind,
    rv: u64,
) -> Result<Cow<'_, BTreeMap<Key, Value>>, ApiError> {
    let current = &st.objects[kind.index()];
    if rv == st.rv {
        return Ok(Cow::Borrowed(current));
    }
    if rv < st.compacted || rv > st.rv {
        return Err(ApiError::Expired(EXPIRED_CONTINUE.into()));
    }
    let mut objs = current.clone();
    for change in st.history.iter().rev().take_while(|c| c.rv > rv) {
        if change.kind != kind {
            continue;
        }
        let key = (
            crate::meta::namespace_of(&change.object).to_string(),
            crate::meta::name_of(&change.object).to_string(),
        );
        match (&change.ty, &change.prev) {
            (ChangeType::Added, _) => {
                objs.remove(&key);
            }
            (_, Some(prev)) => {
                objs.insert(key, prev.clone());
            }
            (_, None) => {}
        }
    }
    Ok(Cow::Owned(objs))
}

impl Store {
    /// A `<Kind>List` document for the query.
    pub fn list(&self, kind: Kind, q: &ListQuery) -> Result<Value, ApiError> {
        let st = self.lock();
        let (rv, start) = match q.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let (rv, key) = decode_token(token)?;
                (rv, Bound::Excluded(key))
            }
            None => (st.rv, Bound::Unbounded),
        };
        let objs = objects_at(&st, kind, rv)?;
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let wanted = |((ns, _), obj): &(&Key, &Value)| {
            q.namespace
                .as_deref()
                .is_none_or(|n| !kind.namespaced || n == ns)
                && q.selectors.matches(obj)
        };
        let mut matching = objs.range((start, Bound::Unbounded)).filter(wanted);
        let mut items = Vec::new();
        let mut last_key = None;
        for (key, obj) in matching.by_ref().take(limit) {
            items.push(obj.clone());
            last_key = Some(key.clone());
        }
        let remaining = matching.count();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if remaining > 0 {
            if let Some(key) = last_key {
                metadata["continue"] = json!(encode_token(rv, &key));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": kind.list_kind(),
            "apiVersion": kind.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let key = ("ns".to_string(), "pod-1".to_string());
        let t = encode_token(42, &key);
        assert_eq!(decode_token(&t).ok(), Some((42, key)));
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
    }
}
