//! The object store: one global resourceVersion, a bounded change history and
//! a broadcast of changes for watchers.

use crate::admit::{check_body, check_precondition, normalize};
use crate::error::ApiError;
use crate::kinds::{self, Kind, KINDS, NAMESPACES};
use crate::meta::{self, name_of, namespace_of};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};

/// `(namespace, name)`; namespace empty for cluster-scoped kinds.
pub type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as kept in history and sent to watchers.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub ty: ChangeType,
    /// The object after the change (for deletes: the last state, at the delete's version).
    pub object: Value,
    /// The object before the change, if it existed.
    pub prev: Option<Value>,
}

/// Construction options for a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The resourceVersion the store starts at; the first write gets this + 1.
    pub start_resource_version: u64,
    /// How many changes are kept for resuming watches and continuing lists.
    pub history_limit: usize,
    /// Capacity of the live change broadcast; a watcher lagging this far gets 410.
    pub broadcast_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            start_resource_version: 1,
            history_limit: 10_000,
            broadcast_capacity: 16_384,
        }
    }
}

pub(crate) struct State {
    pub rv: u64,
    /// Versions below this are expired: no watch or continue from them.
    pub compacted: u64,
    pub objects: Vec<BTreeMap<Key, Value>>,
    pub history: VecDeque<Arc<Change>>,
    history_limit: usize,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub open_watches: AtomicUsize,
    pub watches_started: AtomicU64,
    pub requests: Mutex<BTreeMap<String, u64>>,
}

pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub changes: broadcast::Sender<Arc<Change>>,
    pub drops: watch::Sender<u64>,
    pub stats: Stats,
    /// Indexes (in [`KINDS`]) of the custom resources installed.
    pub installed: Mutex<BTreeSet<usize>>,
    /// Indexes of kinds whose objects clients may not read (as RBAC would refuse them).
    pub forbidden: Mutex<BTreeSet<usize>>,
}

/// The shared object store. Cheap to clone; all clones see the same state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, change: Arc<Change>) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }
}

impl Store {
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    pub fn with_options(opts: StoreOptions) -> Self {
        let (changes, _) = broadcast::channel(opts.broadcast_capacity.max(16));
        let (drops, _) = watch::channel(0);
        let state = State {
            rv: opts.start_resource_version,
            compacted: opts.start_resource_version,
            objects: KINDS.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            history_limit: opts.history_limit.max(1),
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changes,
                drops,
                stats: Stats::default(),
                installed: Mutex::new(BTreeSet::new()),
                forbidden: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `kind` is served: built in, or a custom resource that is installed.
    pub fn is_served(&self, kind: Kind) -> bool {
        !kinds::CRDS.contains(&kind) || self.installed().contains(&kind.index())
    }

    /// Every kind served now.
    pub fn served(&self) -> Vec<Kind> {
        KINDS.iter().copied().filter(|k| self.is_served(*k)).collect()
    }

    fn installed(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.inner.installed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses every request for `kind`'s objects with 403, as missing RBAC would.
    pub fn forbid(&self, kind: Kind) {
        self.inner.forbidden.lock().unwrap_or_else(|e| e.into_inner()).insert(kind.index());
    }

    pub fn is_forbidden(&self, kind: Kind) -> bool {
        self.inner.forbidden.lock().unwrap_or_else(|e| e.into_inner()).contains(&kind.index())
    }

    /// Installs a custom resource's kind (its CRD applied).
    pub fn install(&self, kind: Kind) {
        self.installed().insert(kind.index());
    }

    /// Removes a custom resource's kind: its objects are deleted (watchers see DELETED), then
    /// it is no longer served. Returns how many objects were deleted.
    pub fn uninstall(&self, kind: Kind) -> usize {
        let keys: Vec<Key> = self.lock().objects[kind.index()].keys().cloned().collect();
        let deleted = keys
            .iter()
            .filter(|(ns, name)| self.delete(kind, (!ns.is_empty()).then_some(ns.as_str()), name).is_ok())
            .count();
        self.installed().remove(&kind.index());
        deleted
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Number of stored objects of a kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.lock().objects[kind.index()].len()
    }

    /// All objects of a kind, optionally in one namespace, in key order.
    pub fn objects(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        let st = self.lock();
        st.objects[kind.index()]
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = key_for(&kind, namespace, name);
        self.lock().objects[kind.index()]
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind.plural, name))
    }

    /// Create an object. `namespace` (from the URL) wins over an empty one in the body.
    pub fn create(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let mut obj = check_body(&kind, namespace, None, obj)?;
        if name_of(&obj).is_empty() {
            let generate = meta::str_at(&obj, "metadata.generateName")
                .unwrap_or("")
                .to_string();
            if generate.is_empty() {
                return Err(ApiError::Invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    kind.kind
                )));
            }
            obj["metadata"]["name"] = json!(format!("{generate}{}", meta::random_suffix()));
        }
        let name = name_of(&obj).to_string();
        let key = key_for(&kind, Some(namespace_of(&obj)), &name);
        let mut st = self.lock();
        if st.objects[kind.index()].contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                kind: kind.plural.to_string(),
                name,
            });
        }
        let rv = st.bump();
        normalize(&kind, &mut obj, None, rv);
        st.objects[kind.index()].insert(key, obj.clone());
        self.publish(
            &mut st,
            Change {
                rv,
                kind,
                ty: ChangeType::Added,
                object: obj.clone(),
                prev: None,
            },
        );
        Ok(obj)
    }

    /// Replace an existing object (PUT). A non-empty body resourceVersion must match.
    pub fn replace(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let obj = check_body(&kind, namespace, Some(name), obj)?;
        let key = key_for(&kind, namespace, name);
        let mut st = self.lock();
        let prev = st.objects[kind.index()]
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind.plural, name))?;
        check_precondition(&kind, name, &obj, &prev)?;
        Ok(self.store_modified(&mut st, kind, key, obj, prev))
    }

    /// Apply a JSON merge patch (RFC 7386) to an existing object.
    pub fn merge_patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        if !patch.is_object() {
            return Err(ApiError::BadRequest(
                "a merge patch must be a JSON object".into(),
            ));
        }
        let key = key_for(&kind, namespace, name);
        let mut st = self.lock();
        let prev = st.objects[kind.index()]
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind.plural, name))?;
        check_precondition(&kind, name, patch, &prev)?;
        let mut obj = prev.clone();
        meta::merge_patch(&mut obj, patch);
        if name_of(&obj) != name || namespace_of(&obj) != namespace_of(&prev) {
            return Err(ApiError::BadRequest(
                "a patch may not change metadata.name or metadata.namespace".into(),
            ));
        }
        Ok(self.store_modified(&mut st, kind, key, obj, prev))
    }

    /// Delete an object and return its last state. Deleting a namespace deletes
    /// every namespaced object in it first.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = key_for(&kind, namespace, name);
        let mut st = self.lock();
        if !st.objects[kind.index()].contains_key(&key) {
            return Err(ApiError::not_found(kind.plural, name));
        }
        if kind == NAMESPACES {
            for k in KINDS.iter().filter(|k| k.namespaced) {
                let keys: Vec<Key> = st.objects[k.index()]
                    .keys()
                    .filter(|(ns, _)| ns == name)
                    .cloned()
                    .collect();
                for key in keys {
                    self.remove_locked(&mut st, *k, &key);
                }
            }
        }
        self.remove_locked(&mut st, kind, &key)
            .ok_or_else(|| ApiError::not_found(kind.plural, name))
    }

    fn remove_locked(&self, st: &mut State, kind: Kind, key: &Key) -> Option<Value> {
        let prev = st.objects[kind.index()].remove(key)?;
        let rv = st.bump();
        let mut obj = prev.clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(
            st,
            Change {
                rv,
                kind,
                ty: ChangeType::Deleted,
                object: obj.clone(),
                prev: Some(prev),
            },
        );
        Some(obj)
    }

    /// Create the object if absent, else replace it; the kind comes from its apiVersion/kind.
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&obj)?;
        if !self.is_served(kind) {
            return Err(ApiError::BadRequest(format!("no kind {:?} is served for version {:?} (its CRD is not installed)", kind.kind, kind.api_version())));
        }
        let ns = namespace_of(&obj).to_string();
        let ns = if kind.namespaced {
            Some(if ns.is_empty() {
                "default"
            } else {
                ns.as_str()
            })
        } else {
            None
        };
        let name = name_of(&obj).to_string();
        let exists = !name.is_empty() && self.get(kind, ns, &name).is_ok();
        if exists {
            let mut obj = obj;
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            self.replace(kind, ns, &name, obj)
        } else {
            self.create(kind, ns, obj)
        }
    }

    /// Drop all history: every resourceVersion handed out so far becomes expired
    /// (the version is bumped once, like a compaction revision). Returns the new version.
    pub fn compact(&self) -> u64 {
        let mut st = self.lock();
        let rv = st.bump();
        st.compacted = rv;
        st.history.clear();
        rv
    }

    /// Close every open watch stream.
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|g| *g += 1);
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.inner.stats.open_watches.load(Ordering::SeqCst)
    }

    pub(crate) fn count_request(&self, what: &str) {
        let mut reqs = self
            .inner
            .stats
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *reqs.entry(what.to_string()).or_default() += 1;
    }

    /// Statistics as served by `GET /testapi/stats`.
    pub fn stats(&self) -> Value {
        let (rv, compacted, history, objects) = {
            let st = self.lock();
            let objects: BTreeMap<&str, usize> = KINDS
                .iter()
                .map(|k| (k.plural, st.objects[k.index()].len()))
                .collect();
            (st.rv, st.compacted, st.history.len(), objects)
        };
        let requests = self
            .inner
            .stats
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        json!({
            "resourceVersion": rv.to_string(),
            "compactedResourceVersion": compacted.to_string(),
            "historyLength": history,
            "openWatches": self.open_watches(),
            "watchesStarted": self.inner.stats.watches_started.load(Ordering::SeqCst),
            "objects": objects,
            "requests": requests,
        })
    }

    /// Stores `obj` as the new version of `prev` under `key` and tells the watchers.
    fn store_modified(&self, st: &mut State, kind: Kind, key: Key, mut obj: Value, prev: Value) -> Value {
        let rv = st.bump();
        normalize(&kind, &mut obj, Some(&prev), rv);
        st.objects[kind.index()].insert(key, obj.clone());
        let change = Change { rv, kind, ty: ChangeType::Modified, object: obj.clone(), prev: Some(prev) };
        self.publish(st, change);
        obj
    }

    fn publish(&self, st: &mut State, change: Change) {
        let change = Arc::new(change);
        st.record(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.inner.changes.send(change);
    }
}

/// The kind an object declares by apiVersion and kind.
pub fn kind_of(obj: &Value) -> Result<Kind, ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    kinds::by_type(api_version, kind).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        ))
    })
}

pub(crate) fn key_for(kind: &Kind, namespace: Option<&str>, name: &str) -> Key {
    let ns = if kind.namespaced {
        namespace.unwrap_or("default")
    } else {
        ""
    };
    (ns.to_string(), name.to_string())
}
