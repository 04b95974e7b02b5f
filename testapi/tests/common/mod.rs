//! Helpers shared by the integration tests: kube clients for an in-process
//! server, raw HTTP, reflectors and waiting.
#![allow(dead_code)]

use futures::StreamExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store as ReaderStore};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource};
use moat_testapi::{kubeconfig, Store, TestServer};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn server() -> TestServer {
    TestServer::start(Store::new())
        .await
        .expect("start test server")
}

/// A kube client built from the kubeconfig the server would write.
pub async fn client(server: &TestServer) -> Client {
    let kc = Kubeconfig::from_yaml(&kubeconfig(&server.url())).expect("parse kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(config).expect("client")
}

/// One raw HTTP/1.1 request; returns the status code and the body parsed as JSON
/// (or as a JSON string if it is not JSON).
pub async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let value = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
    (code, value)
}

/// Decode a chunked transfer-encoded body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn post(server: &TestServer, path: &str) -> Value {
    let (code, v) = raw(server, "POST", path, "application/json", "").await;
    assert_eq!(code, 200, "{path}: {v}");
    v
}

/// A running reflector plus the watcher errors it has seen.
pub struct Reflected<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq + Clone,
{
    pub reader: ReaderStore<K>,
    pub errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Resource + 'static> Drop for Reflected<K>
where
    K::DynamicType: Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn reflect<K>(api: Api<K>, config: watcher::Config) -> Reflected<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
{
    let (reader, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                errs.lock().unwrap().push(format!("{e:?}"));
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .expect("reflector ready in time")
        .expect("writer alive");
    Reflected {
        reader,
        errors,
        task,
    }
}

/// Wait up to 10 s for `cond`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Sorted `(namespace, name, resourceVersion)` of reflected objects.
pub fn reflected_keys<K: Resource>(objs: &[Arc<K>]) -> Vec<(String, String, String)> {
    let mut keys: Vec<_> = objs
        .iter()
        .map(|o| {
            let m = o.meta();
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
                m.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// Sorted `(namespace, name, resourceVersion)` of the server's objects.
pub fn server_keys(objs: &[Value]) -> Vec<(String, String, String)> {
    let s = |o: &Value, p: &str| o["metadata"][p].as_str().unwrap_or_default().to_string();
    let mut keys: Vec<_> = objs
        .iter()
        .map(|o| (s(o, "namespace"), s(o, "name"), s(o, "resourceVersion")))
        .collect();
    keys.sort();
    keys
}
