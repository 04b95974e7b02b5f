//! Admission of written objects: body checks against the URL, optimistic
//! concurrency, and the server-managed metadata fields.

use crate::error::ApiError;
use crate::kinds::{Kind, NAMESPACES};
use crate::meta::{self, name_of, namespace_of};
use serde_json::{json, Value};

/// Validate a request body against the URL: object, matching type, namespace and name.
pub(crate) fn check_body(
    kind: &Kind,
    namespace: Option<&str>,
    name: Option<&str>,
    mut obj: Value,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let obj_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!api_version.is_empty() && api_version != kind.api_version())
        || (!obj_kind.is_empty() && obj_kind != kind.kind)
    {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) and kind ({obj_kind}) do not match the endpoint {}/{}",
            kind.api_version(),
            kind.kind
        )));
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => obj["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::BadRequest("metadata must be an object".into())),
    }
    if kind.namespaced {
        let url_ns = namespace.unwrap_or("default");
        let body_ns = namespace_of(&obj);
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        obj["metadata"]["namespace"] = json!(url_ns);
    }
    if let Some(name) = name {
        let body_name = name_of(&obj);
        if body_name.is_empty() {
            obj["metadata"]["name"] = json!(name);
        } else if body_name != name {
            return Err(ApiError::BadRequest(
                "the name of the object does not match the name on the URL".into(),
            ));
        }
    }
    Ok(obj)
}

pub(crate) fn check_precondition(
    kind: &Kind,
    name: &str,
    body: &Value,
    current: &Value,
) -> Result<(), ApiError> {
    let want = meta::str_at(body, "metadata.resourceVersion").unwrap_or("");
    let have = meta::str_at(current, "metadata.resourceVersion").unwrap_or("");
    if !want.is_empty() && want != have {
        return Err(ApiError::Conflict {
            kind: kind.plural.to_string(),
            name: name.to_string(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        });
    }
    Ok(())
}

/// Fill in server-managed fields.
pub(crate) fn normalize(kind: &Kind, obj: &mut Value, prev: Option<&Value>, rv: u64) {
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind);
    let prev_meta = |field: &str| prev.and_then(|p| p["metadata"].get(field)).cloned();
    let md = &mut obj["metadata"];
    if !kind.namespaced {
        if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
    }
    md["resourceVersion"] = json!(rv.to_string());
    for field in ["uid", "creationTimestamp"] {
        if let Some(v) = prev_meta(field) {
            md[field] = v;
        }
    }
    if md
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        md["uid"] = json!(meta::new_uid());
    }
    if md
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        md["creationTimestamp"] = json!(meta::now_rfc3339());
    }
    if *kind == NAMESPACES {
        let name = md["name"].clone();
        if !md.get("labels").is_some_and(Value::is_object) {
            md["labels"] = json!({});
        }
        md["labels"]["kubernetes.io/metadata.name"] = name;
        if obj.get("spec").is_none_or(Value::is_null) {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        if obj.get("status").is_none_or(Value::is_null) {
            obj["status"] = json!({"phase": "Active"});
        }
    }
}
