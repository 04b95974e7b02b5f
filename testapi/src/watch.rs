//! Watch streams: replay from history or a synthetic initial state, then live
//! changes, bookmarks, 410 on expired versions, closing on drop-watches.

use crate::error::ApiError;
use crate::kinds::Kind;
use crate::selector::Selectors;
use crate::store::{Change, ChangeType, State, Store};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{interval_at, Instant};

/// How often bookmarks are sent to watchers that asked for them.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// What a watch request asks for.
#[derive(Debug, Clone, Default)]
pub struct WatchQuery {
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// `resourceVersion` as given; empty or "0" means "current state, then changes".
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
}

impl WatchQuery {
    fn wants(&self, kind: &Kind, obj: &Value) -> bool {
        let ns_ok = match (&self.namespace, kind.namespaced) {
            (Some(n), true) => crate::meta::namespace_of(obj) == n,
            _ => true,
        };
        ns_ok && self.selectors.matches(obj)
    }
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: &'a Value,
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut buf = serde_json::to_vec(&Event { ty, object }).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

fn bookmark(kind: &Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let err = ApiError::Expired(format!("too old resource version: {requested} ({oldest})"));
    line("ERROR", &err.status())
}

/// The event (if any) a watcher with this query sees for a change, honouring
/// objects moving into or out of its selectors.
fn render(kind: &Kind, q: &WatchQuery, change: &Change) -> Option<Bytes> {
    if change.kind != *kind {
        return None;
    }
    let now = q.wants(kind, &change.object);
    let before = change.prev.as_ref().is_some_and(|p| q.wants(kind, p));
    let ty = match (change.ty, before, now) {
        (ChangeType::Added, _, true) => "ADDED",
        (ChangeType::Modified, false, true) => "ADDED",
        (ChangeType::Modified, true, true) => "MODIFIED",
        (ChangeType::Modified, true, false) => "DELETED",
        (ChangeType::Deleted, true, _) => "DELETED",
        _ => return None,
    };
    Some(line(ty, &change.object))
}

/// Everything decided under the store lock when a watch starts.
enum Start {
    Expired(Bytes),
    Stream {
        initial: Vec<Bytes>,
        rv: u64,
        rx: broadcast::Receiver<Arc<Change>>,
    },
}

fn start(store: &Store, st: &State, kind: &Kind, q: &WatchQuery) -> Result<Start, ApiError> {
    let requested = q.resource_version.as_deref().unwrap_or("");
    let rx = store.inner.changes.subscribe();
    let synthetic = requested.is_empty() || requested == "0" || q.send_initial_events;
    let mut initial = Vec::new();
    if synthetic {
        for obj in st.objects[kind.index()]
            .values()
            .filter(|o| q.wants(kind, o))
        {
            initial.push(line("ADDED", obj));
        }
        if q.send_initial_events {
            initial.push(bookmark(kind, st.rv, true));
        }
        return Ok(Start::Stream {
            initial,
            rv: st.rv,
            rx,
        });
    }
    let from: u64 = requested
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {requested:?}")))?;
    if from < st.compacted || from > st.rv {
        return Ok(Start::Expired(expired(from, st.compacted)));
    }
    for change in st.history.iter().filter(|c| c.rv > from) {
        if let Some(ev) = render(kind, q, change) {
            initial.push(ev);
        }
    }
    Ok(Start::Stream {
        initial,
        rv: st.rv,
        rx,
    })
}

struct OpenWatch(Store);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .inner
            .stats
            .open_watches
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// Start a watch; the returned receiver yields the newline-delimited JSON events.
pub fn watch(store: &Store, kind: Kind, q: WatchQuery) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let (tx, out) = mpsc::channel::<Bytes>(256);
    let mut drops = store.inner.drops.subscribe();
    drops.borrow_and_update();
    let started = {
        let st = store.lock();
        start(store, &st, &kind, &q)?
    };
    store
        .inner
        .stats
        .watches_started
        .fetch_add(1, Ordering::SeqCst);
    let (initial, mut last_rv, mut rx) = match started {
        Start::Expired(ev) => {
            // The receiver is returned below, so this first send cannot block.
            let _ = tx.try_send(ev);
            return Ok(out);
        }
        Start::Stream { initial, rv, rx } => (initial, rv, rx),
    };
    store
        .inner
        .stats
        .open_watches
        .fetch_add(1, Ordering::SeqCst);
    let guard = OpenWatch(store.clone());
    tokio::spawn(async move {
        let _guard = guard;
        for ev in initial {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        let deadline = q.timeout.map(|t| Instant::now() + t);
        let timeout = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        let mut ticks = interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        loop {
            tokio::select! {
                _ = drops.changed() => return,
                _ = &mut timeout => return,
                _ = tx.closed() => return,
                _ = ticks.tick(), if q.bookmarks => {
                    // Every change up to `current` is already queued in `rx`: deliver
                    // those first so the bookmark never skips an undelivered change.
                    let current = _guard.0.resource_version();
                    loop {
                        match rx.try_recv() {
                            Ok(change) => {
                                last_rv = change.rv;
                                if let Some(ev) = render(&kind, &q, &change) {
                                    if tx.send(ev).await.is_err() { return; }
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                let _ = tx.send(expired(last_rv, last_rv + 1)).await;
                                return;
                            }
                            Err(_) => break,
                        }
                    }
                    if tx.send(bookmark(&kind, current.max(last_rv), false)).await.is_err() { return; }
                }
                got = rx.recv() => match got {
                    Ok(change) => {
                        last_rv = change.rv;
                        if let Some(ev) = render(&kind, &q, &change) {
                            if tx.send(ev).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(expired(last_rv, last_rv + 1)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(out)
}
