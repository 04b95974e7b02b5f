//! Test control endpoints under `/testapi/`.

use crate::error::ApiError;
use crate::query::Params;
use crate::store::Store;
use hyper::Method;
use serde_json::{json, Value};

/// Handle `/testapi/<rest>`; returns the JSON answer.
pub fn handle(
    store: &Store,
    method: &Method,
    rest: &[&str],
    params: &Params,
) -> Result<Value, ApiError> {
    match (method, rest) {
        (&Method::POST, ["compact"]) => {
            let rv = store.compact();
            let dropped = if params.flag("dropWatches") {
                let open = store.open_watches();
                store.drop_watches();
                open
            } else {
                0
            };
            Ok(json!({"compactedResourceVersion": rv.to_string(), "droppedWatches": dropped}))
        }
        (&Method::POST, ["drop-watches"]) => {
            let open = store.open_watches();
            store.drop_watches();
            Ok(json!({"droppedWatches": open}))
        }
        (&Method::GET, ["stats"]) => Ok(store.stats()),
        (&Method::POST | &Method::DELETE, ["crds", name]) => {
            let kind = crate::kinds::crd_by_name(name).ok_or(ApiError::NoRoute)?;
            let installed = method == Method::POST;
            let deleted = if installed { store.install(kind); 0 } else { store.uninstall(kind) };
            Ok(json!({"crd": name, "installed": installed, "deletedObjects": deleted}))
        }
        (&Method::POST, ["forbid", name]) => {
            let kind = crate::kinds::crd_by_name(name).ok_or(ApiError::NoRoute)?;
            store.forbid(kind);
            Ok(json!({"forbidden": name}))
        }
        (_, ["compact"] | ["drop-watches"] | ["stats"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NoRoute),
    }
}
