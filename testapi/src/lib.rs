//! moat-testapi: a test Kubernetes API server that speaks the real list/watch
//! protocol (plain HTTP, Kubernetes JSON) for namespaces, nodes, pods, services,
//! events and networkpolicies, so kube-rs clients run against it unchanged.
//!
//! Behaviour, as the real API server:
//! - one global resourceVersion; lists are consistent snapshots (continue
//!   tokens are rebuilt from history, 410 Expired once it is gone);
//! - watches replay history after `resourceVersion`, or send the current state
//!   as ADDED when it is empty or "0" (plus an `initial-events-end` BOOKMARK
//!   for `sendInitialEvents=true`), then live changes; BOOKMARKs every second
//!   when `allowWatchBookmarks`; an `ERROR` event with a 410 `Status` when the
//!   version is no longer retained (or newer than the server's);
//!   `timeoutSeconds` ends the stream; objects moving in or out of a watch's
//!   selectors are sent as ADDED/DELETED;
//! - namespaces get `kubernetes.io/metadata.name`; deleting one deletes the
//!   namespaced objects in it at once (no Terminating phase).
//!
//! Custom resources (ClusterNetworkPolicy) are served only once installed, as with a CRD:
//! `POST /testapi/crds/<plural>.<group>` installs, `DELETE` removes it with its objects;
//! `POST /testapi/forbid/<plural>.<group>` answers every request for its objects with 403, as
//! a client without RBAC for it gets.
//!
//! Test control: `POST /testapi/compact[?dropWatches=true]` drops all history
//! and bumps the version once, so every version handed out before is expired;
//! `POST /testapi/drop-watches` closes every open watch; `GET /testapi/stats`.
mod admit;
pub mod body;
pub mod control;
pub mod error;
pub mod http;
pub mod kinds;
pub mod list;
pub mod manifest;
pub mod meta;
pub mod query;
pub mod selector;
pub mod store;
pub mod watch;

pub use error::{ApiError, ServerError};
pub use kinds::{Kind, EVENTS, KINDS, NAMESPACES, NETWORK_POLICIES, NODES, PODS, SERVICES};
pub use list::ListQuery;
pub use manifest::{kubeconfig, load_path, parse_manifests};
pub use store::{Store, StoreOptions};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serve the store on an already bound listener until the task is dropped or aborted.
/// Only returns on a failure to read the listener's address.
pub async fn serve(listener: TcpListener, store: Store) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| http::handle(store.clone(), req, local));
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}

/// A server running in this process, for tests.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    handle: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Bind 127.0.0.1 on a free port and serve `store` on a spawned task.
    pub async fn start(store: Store) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handle = tokio::spawn(serve(listener, store.clone()));
        Ok(Self {
            addr,
            store,
            handle,
        })
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
