//! HTTP routing: discovery, resource paths as the real API lays them out, and
//! the test control endpoints.

use crate::body::Body;
use crate::error::ApiError;
use crate::kinds::{self, Kind};
use crate::query::Params;
use crate::store::Store;
use crate::{control, watch};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;

/// Largest accepted request body.
const MAX_BODY: usize = 8 << 20;

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code(), &err.status())
}

/// A resource path resolved to its kind, namespace and optional object name.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

/// Resolve the segments after `/api/v1` or `/apis/{group}/{version}`.
fn resolve(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let find = |plural: &str| kinds::by_path(group, version, plural).ok_or(ApiError::NoRoute);
    let target = match rest {
        // Subresources of a namespace itself, e.g. /api/v1/namespaces/x/status.
        ["namespaces", name, "status" | "finalize"] if group.is_empty() => Target {
            kind: kinds::NAMESPACES,
            namespace: None,
            name: Some(name.to_string()),
        },
        ["namespaces", ns, plural, tail @ ..] => {
            let kind = find(plural)?;
            if !kind.namespaced {
                return Err(ApiError::NoRoute);
            }
            let name = match tail {
                [] => None,
                [name] | [name, "status"] => Some(name.to_string()),
                _ => return Err(ApiError::NoRoute),
            };
            Target {
                kind,
                namespace: Some(ns.to_string()),
                name,
            }
        }
        [plural, tail @ ..] => {
            let kind = find(plural)?;
            let name = match tail {
                [] => None,
                [name] | [name, "status" | "finalize"] if !kind.namespaced => {
                    Some(name.to_string())
                }
                _ => return Err(ApiError::NoRoute),
            };
            Target {
                kind,
                namespace: None,
                name,
            }
        }
        [] => return Err(ApiError::NoRoute),
    };
    Ok(target)
}

async fn read_json(body: Incoming) -> Result<Value, ApiError> {
    let bytes: Bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading request body: {e}")))?
        .to_bytes();
    if bytes.len() > MAX_BODY {
        return Err(ApiError::BadRequest("request body too large".into()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("couldn't decode the request body as JSON: {e}")))
}

fn is_yaml(req: &Request<Incoming>) -> bool {
    content_type(req).contains("yaml")
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

async fn resource(
    store: &Store,
    req: Request<Incoming>,
    t: Target,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    let ns = t.namespace.as_deref();
    let verb_of = |v: &str| store.count_request(&format!("{v} {}", t.kind.plural));
    match (req.method().clone(), t.name.as_deref()) {
        (Method::GET, None) if params.flag("watch") => {
            verb_of("watch");
            let rx = watch::watch(store, t.kind, params.watch_query(&t.kind, ns)?)?;
            let mut resp = Response::new(Body::Stream(rx));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        (Method::GET, None) => {
            verb_of("list");
            Ok(json_response(
                200,
                &store.list(t.kind, &params.list_query(&t.kind, ns)?)?,
            ))
        }
        (Method::GET, Some(name)) => {
            verb_of("get");
            Ok(json_response(200, &store.get(t.kind, ns, name)?))
        }
        (Method::POST, None) if t.kind.namespaced && ns.is_none() => {
            Err(ApiError::MethodNotAllowed)
        }
        (Method::POST, None) => {
            verb_of("create");
            if is_yaml(&req) {
                return Err(ApiError::UnsupportedMediaType("application/json".into()));
            }
            let obj = read_json(req.into_body()).await?;
            Ok(json_response(201, &store.create(t.kind, ns, obj)?))
        }
        (Method::PUT, Some(name)) => {
            verb_of("update");
            let name = name.to_string();
            let obj = read_json(req.into_body()).await?;
            Ok(json_response(200, &store.replace(t.kind, ns, &name, obj)?))
        }
        (Method::PATCH, Some(name)) => {
            verb_of("patch");
            let ct = content_type(&req);
            if !ct.starts_with("application/merge-patch+json")
                && !ct.starts_with("application/strategic-merge-patch+json")
            {
                return Err(ApiError::UnsupportedMediaType(
                    "application/merge-patch+json, application/strategic-merge-patch+json".into(),
                ));
            }
            let name = name.to_string();
            let patch = read_json(req.into_body()).await?;
            Ok(json_response(
                200,
                &store.merge_patch(t.kind, ns, &name, &patch)?,
            ))
        }
        (Method::DELETE, Some(name)) => {
            verb_of("delete");
            Ok(json_response(200, &store.delete(t.kind, ns, name)?))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

async fn route(
    store: &Store,
    req: Request<Incoming>,
    local: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let params = Params::parse(req.uri().query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez"] if get => {
            let mut resp = Response::new(Body::full("ok"));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(resp)
        }
        ["version"] if get => Ok(json_response(200, &kinds::version_doc())),
        ["api"] if get => Ok(json_response(
            200,
            &kinds::api_versions_doc(&local.to_string()),
        )),
        ["apis"] if get => Ok(json_response(200, &kinds::api_group_list_doc(&store.served()))),
        ["api", "v1"] if get => kinds::api_resource_list_doc(&store.served(), "", "v1")
            .map(|d| json_response(200, &d))
            .ok_or(ApiError::NoRoute),
        ["apis", group, version] if get => kinds::api_resource_list_doc(&store.served(), group, version)
            .map(|d| json_response(200, &d))
            .ok_or(ApiError::NoRoute),
        ["testapi", rest @ ..] => {
            control::handle(store, req.method(), rest, &params).map(|v| json_response(200, &v))
        }
        ["api", "v1", rest @ ..] => {
            let t = resolve("", "v1", rest)?;
            resource(store, req, t, &params).await
        }
        ["apis", group, version, rest @ ..] => {
            let t = resolve(group, version, rest)?;
            if !store.is_served(t.kind) {
                return Err(ApiError::NoRoute);
            }
            if store.is_forbidden(t.kind) {
                return Err(ApiError::Forbidden(format!("{}.{}", t.kind.plural, t.kind.group)));
            }
            resource(store, req, t, &params).await
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// Answer one request; errors become `Status` responses, never panics.
pub async fn handle(
    store: Store,
    req: Request<Incoming>,
    local: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    store.count_request("total");
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = match route(&store, req, local).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    };
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), "request");
    Ok(resp)
}
