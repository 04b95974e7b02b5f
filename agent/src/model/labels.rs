//! An object's labels, kept compactly. A `BTreeMap<String, String>` costs a B-tree node (about
//! half a kilobyte) plus two allocations per label for every pod; pods of one Deployment share
//! their keys and most values, and usually the whole set. Here a label set is one sorted
//! slice of shared strings, equal strings are one allocation across the model (`intern`),
//! and so are equal label sets.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::intern::{shared, Interner};

/// Labels sorted by key, keys unique.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[Label]>);

type Label = (Arc<str>, Arc<str>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|index| &*self.0[index].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// In key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (&**key, &**value))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` to `value`; returns the value it replaced. Copies the slice: labels are
    /// built once per object, not edited in place.
    pub fn insert(&mut self, key: &str, value: &str) -> Option<String> {
        let value = intern(value);
        let mut pairs = self.0.to_vec();
        let old = match pairs.binary_search_by(|(k, _)| (**k).cmp(key)) {
            Ok(index) => Some(std::mem::replace(&mut pairs[index].1, value).to_string()),
            Err(index) => {
                pairs.insert(index, (intern(key), value));
                None
            }
        };
        self.0 = intern_set(pairs);
        old
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no label {key:?}"),
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// A later duplicate key wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(key, value)| (intern(key.as_ref()), intern(value.as_ref())))
            .collect();
        // Stable, so among equal keys the last is last; keep it.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => unique.push(pair),
            }
        }
        Self(intern_set(unique))
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        map.iter().collect()
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(|map| Labels::from(&map))
    }
}

/// Every label string (and every label set) the model holds, once.
static STRINGS: Mutex<Option<Interner<str>>> = Mutex::new(None);
static SETS: Mutex<Option<Interner<[Label]>>> = Mutex::new(None);

/// The shared copy of `text`.
pub fn intern(text: &str) -> Arc<str> {
    shared(&STRINGS, text, || text.into())
}

/// The shared copy of a sorted label set.
fn intern_set(pairs: Vec<Label>) -> Arc<[Label]> {
    shared(&SETS, pairs.as_slice(), || pairs.clone().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::intern::FIRST_SWEEP;

    #[test]
    fn labels_behave_as_a_sorted_map() {
        let mut labels: Labels = [("tier", "web"), ("app", "shop"), ("tier", "db")].into_iter().collect();
        assert_eq!(labels.iter().collect::<Vec<_>>(), [("app", "shop"), ("tier", "db")], "sorted, last duplicate wins");
        assert_eq!(labels.get("app"), Some("shop"));
        assert_eq!(labels.get("zone"), None);
        assert_eq!(labels.insert("zone", "a"), None);
        assert_eq!(labels.insert("app", "cart"), Some("shop".to_string()));
        assert_eq!(labels.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["app", "tier", "zone"]);
        assert_eq!(&labels["app"], "cart");
        let map: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(Labels::from(&map), labels);
        assert_eq!(format!("{labels:?}"), r#"{"app": "cart", "tier": "db", "zone": "a"}"#);
    }

    #[test]
    fn equal_strings_are_shared_and_unused_ones_swept() {
        let a: Labels = [("app", "interned-once")].into_iter().collect();
        let b: Labels = [("app", "interned-once")].into_iter().collect();
        assert!(Arc::ptr_eq(&a.0, &b.0), "equal sets are one allocation");
        let wider: Labels = [("app", "interned-once"), ("tier", "web")].into_iter().collect();
        assert!(!Arc::ptr_eq(&a.0, &wider.0));
        assert!(Arc::ptr_eq(&a.0[0].1, &wider.0[0].1), "and a string is one across sets");
        // Strings no label holds any more go at a sweep; held ones stay shared.
        for i in 0..FIRST_SWEEP * 2 {
            drop(intern(&format!("churn-{i}")));
        }
        let count = STRINGS.lock().unwrap().as_ref().unwrap().items.len();
        assert!(count < FIRST_SWEEP * 2, "{count} strings kept");
        let c: Labels = [("app", "interned-once")].into_iter().collect();
        assert!(Arc::ptr_eq(&a.0[0].1, &c.0[0].1));
    }
}
