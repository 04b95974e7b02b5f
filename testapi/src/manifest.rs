//! Loading initial objects from YAML/JSON manifests, and writing a kubeconfig.

use crate::error::ServerError;
use crate::kinds::NAMESPACES;
use crate::store::{kind_of, Store};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Parse manifest text: multi-document YAML or JSON; `kind: List` (or any
/// `*List` with `items`) is flattened.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Value>, ServerError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| ServerError::Manifest {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        flatten(value, &mut out);
    }
    Ok(out)
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Object(mut map) => {
            let is_list = map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"));
            match map.remove("items") {
                Some(Value::Array(items)) if is_list => {
                    items.into_iter().for_each(|i| flatten(i, out))
                }
                Some(other) => {
                    map.insert("items".into(), other);
                    out.push(Value::Object(map));
                }
                None => out.push(Value::Object(map)),
            }
        }
        Value::Array(items) => items.into_iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn manifest_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_manifest {
                manifest_files(&entry, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Load every manifest under `path` (a file or a directory, recursively) into
/// the store; namespaces go first. Returns how many objects were stored.
pub fn load_path(store: &Store, path: &Path) -> Result<usize, ServerError> {
    let mut files = Vec::new();
    manifest_files(path, &mut files)?;
    let mut objects = Vec::new();
    for file in &files {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ServerError::Io {
            path: origin.clone(),
            source,
        })?;
        for obj in parse_manifests(&text, &origin)? {
            objects.push((origin.clone(), obj));
        }
    }
    load_objects(store, objects)
}

/// Store `(origin, object)` pairs, namespaces first.
pub fn load_objects(
    store: &Store,
    mut objects: Vec<(String, Value)>,
) -> Result<usize, ServerError> {
    objects.sort_by_key(|(_, o)| kind_of(o).map(|k| k != NAMESPACES).unwrap_or(true));
    let count = objects.len();
    for (origin, obj) in objects {
        store.apply(obj).map_err(|source| ServerError::Load {
            path: origin,
            source,
        })?;
    }
    Ok(count)
}

/// A kubeconfig for `http://<addr>`: one cluster, a user without credentials, one context.
pub fn kubeconfig(server_url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: moat-test\n  cluster:\n    server: {server_url}\n\
users:\n- name: moat-test\n  user: {{}}\ncontexts:\n- name: moat-test\n  context:\n    cluster: moat-test\n    \
user: moat-test\n    namespace: default\ncurrent-context: moat-test\npreferences: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_doc_and_lists() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\n\
apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n\
- {apiVersion: v1, kind: Node, metadata: {name: n2}}\n";
        let objs = parse_manifests(text, "t").unwrap_or_default();
        assert_eq!(objs.len(), 3);
        assert!(parse_manifests("a: [", "t").is_err());
        let store = Store::new();
        let n = load_objects(
            &store,
            objs.into_iter().map(|o| ("t".to_string(), o)).collect(),
        );
        assert_eq!(n.ok(), Some(3));
    }
}
