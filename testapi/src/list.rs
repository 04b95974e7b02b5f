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

/// A continue token: the list's version, how many objects the pages before returned, and
/// the last key returned.
fn encode_token(rv: u64, returned: usize, key: &Key) -> String {
    let raw = format!("{rv}/{returned}/{}/{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<(u64, usize, Key), ApiError> {
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
    let mut parts = raw.splitn(4, '/');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let returned = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, returned, (ns, name)))
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
    /// A `<Kind>List` document for the query. A page costs what it returns, as on a real
    /// API server: the scan starts at the continue key (or the namespace) and stops after
    /// one object past the page; `remainingItemCount` comes from the count the token
    /// carries, and, as Kubernetes does, is left out when selectors filter the list.
    pub fn list(&self, kind: Kind, q: &ListQuery) -> Result<Value, ApiError> {
        let st = self.lock();
        let namespace = q.namespace.as_deref().filter(|_| kind.namespaced);
        let (rv, returned, start) = match q.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let (rv, returned, key) = decode_token(token)?;
                (rv, returned, Bound::Excluded(key))
            }
            None => match namespace {
                Some(ns) => (st.rv, 0, Bound::Included((ns.to_string(), String::new()))),
                None => (st.rv, 0, Bound::Unbounded),
            },
        };
        let objs = objects_at(&st, kind, rv)?;
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let in_namespace = |((ns, _), _): &(&Key, &Value)| namespace.is_none_or(|n| n == ns);
        let mut matching = objs
            .range((start, Bound::Unbounded))
            .skip_while(|entry| !in_namespace(entry))
            .take_while(in_namespace)
            .filter(|(_, obj)| q.selectors.matches(obj));
        let mut items = Vec::new();
        let mut last_key = None;
        for (key, obj) in matching.by_ref().take(limit) {
            items.push(obj.clone());
            last_key = Some(key.clone());
        }
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(key) = last_key.filter(|_| matching.next().is_some()) {
            let returned = returned + items.len();
            metadata["continue"] = json!(encode_token(rv, returned, &key));
            if q.selectors.is_empty() {
                let total = match namespace {
                    Some(ns) => objs.range((ns.to_string(), String::new())..).take_while(|((n, _), _)| n == ns).count(),
                    None => objs.len(),
                };
                metadata["remainingItemCount"] = json!(total.saturating_sub(returned));
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
        let t = encode_token(42, 500, &key);
        assert_eq!(decode_token(&t).ok(), Some((42, 500, key)));
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
    }

    fn store(pods: usize) -> Store {
        let store = Store::new();
        for i in 0..pods {
            let app = if i % 2 == 0 { "even" } else { "odd" };
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i:03}"), "namespace": format!("ns{}", i % 3), "labels": {"app": app}}});
            store.apply(pod).expect("pod stored");
        }
        store
    }

    /// Every page of a list: (names, remainingItemCount) per page.
    fn pages(store: &Store, query: ListQuery, limit: usize) -> Vec<(Vec<String>, Option<u64>)> {
        let mut out = Vec::new();
        let mut query = ListQuery { limit: Some(limit), ..query };
        loop {
            let page = store.list(crate::kinds::PODS, &query).expect("page listed");
            let names = page["items"].as_array().expect("items").iter().map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
            out.push((names, page["metadata"]["remainingItemCount"].as_u64()));
            match page["metadata"]["continue"].as_str() {
                Some(token) => query.continue_token = Some(token.to_string()),
                None => return out,
            }
        }
    }

    #[test]
    fn pages_count_what_remains() {
        let store = store(25);
        let all = pages(&store, ListQuery::default(), 10);
        let remaining: Vec<Option<u64>> = all.iter().map(|(_, r)| *r).collect();
        assert_eq!(remaining, [Some(15), Some(5), None]);
        assert_eq!(all.iter().map(|(names, _)| names.len()).sum::<usize>(), 25);
        // Exactly a page's worth left: the last full page says there is no more.
        assert_eq!(pages(&store, ListQuery::default(), 5).len(), 5);
    }

    #[test]
    fn namespace_pages_stay_in_the_namespace() {
        let store = store(25);
        let query = ListQuery { namespace: Some("ns1".into()), ..ListQuery::default() };
        let all = pages(&store, query, 3);
        let names: Vec<&String> = all.iter().flat_map(|(names, _)| names).collect();
        let expected: Vec<String> = (0..25).filter(|i| i % 3 == 1).map(|i| format!("p{i:03}")).collect();
        assert_eq!(names, expected.iter().collect::<Vec<_>>());
        assert_eq!(all[0].1, Some(5));
    }

    #[test]
    fn filtered_pages_leave_the_count_out() {
        let store = store(25);
        let selectors = Selectors {
            labels: crate::selector::LabelSelector::parse("app=odd").expect("selector"),
            ..Selectors::default()
        };
        let all = pages(&store, ListQuery { selectors, ..ListQuery::default() }, 5);
        assert_eq!(all.iter().map(|(names, _)| names.len()).collect::<Vec<_>>(), [5, 5, 2]);
        assert!(all.iter().all(|(_, remaining)| remaining.is_none()));
    }
}
