//! Differences between two states of one map, so a one-pod change is a handful of writes.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    pub added: Vec<(K, V)>,
    /// Keys present in both whose value differs, with the new value.
    pub changed: Vec<(K, V)>,
    pub removed: Vec<K>,
}

impl<K, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }
}

pub fn maps<K: Ord + Clone, V: PartialEq + Clone>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Changes<K, V> {
    let mut changes = Changes { added: Vec::new(), changed: Vec::new(), removed: Vec::new() };
    for (key, value) in new {
        match old.get(key) {
            None => changes.added.push((key.clone(), value.clone())),
            Some(previous) if previous != value => changes.changed.push((key.clone(), value.clone())),
            Some(_) => {}
        }
    }
    changes.removed = old.keys().filter(|key| !new.contains_key(*key)).cloned().collect();
    changes
}

pub fn sets<K: Ord + Clone>(old: &BTreeSet<K>, new: &BTreeSet<K>) -> Changes<K, ()> {
    Changes {
        added: new.difference(old).map(|key| (key.clone(), ())).collect(),
        changed: Vec::new(),
        removed: old.difference(new).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_only_what_changed() {
        let old: BTreeMap<u32, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let new: BTreeMap<u32, &str> = [(1, "a"), (2, "B"), (4, "d")].into();
        let changes = maps(&old, &new);
        assert_eq!(changes.added, vec![(4, "d")]);
        assert_eq!(changes.changed, vec![(2, "B")]);
        assert_eq!(changes.removed, vec![3]);
        assert!(maps(&new, &new).is_empty());
    }

    #[test]
    fn set_diff() {
        let old: BTreeSet<u8> = [1, 2].into();
        let new: BTreeSet<u8> = [2, 3].into();
        let changes = sets(&old, &new);
        assert_eq!(changes.added, vec![(3, ())]);
        assert_eq!(changes.removed, vec![1]);
    }
}
