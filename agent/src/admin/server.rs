//! Serves the admin socket: created root-owned with mode 0600 before anyone can connect.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;

use super::{status, AdminError, Notice, Request};
use crate::observability::Shared;

/// Binds the socket (replacing a stale one) and serves it on a spawned task.
pub fn start(path: &Path, shared: Arc<Shared>) -> Result<(), AdminError> {
    let error = |action| move |source| AdminError::Socket { path: path.into(), action, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error("creating its directory"))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error("removing a stale socket")(e)),
        _ => {}
    }
    // Created with no permissions for group and others from the start (umask), then
    // narrowed explicitly: there is no window in which another user could connect.
    // SAFETY: umask only changes this process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(error("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error("setting mode 0600"))?;
    std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(error("chown root:root"))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, shared.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Request>(&line).map_err(|e| format!("bad request {line:?}: {e}")),
        Ok(None) => return,
        Err(error) => Err(format!("reading the request: {error}")),
    };
    let result = match request {
        Ok(Request::Status) => {
            let shared = shared.clone();
            let report = tokio::task::spawn_blocking(move || status::report(&shared)).await;
            match report {
                Ok(report) => send(&mut write, &report).await,
                Err(error) => send(&mut write, &Notice::Error { message: format!("building the status: {error}") }).await,
            }
        }
        Ok(Request::Observe(filter)) => {
            let mut events = shared.hub.subscribe();
            loop {
                tokio::select! {
                    received = events.recv() => match received {
                        Ok(event) if filter.matches(&event) => {
                            if send(&mut write, &*event).await.is_err() { break; }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(count)) => {
                            shared.losses.observer_lagged(count);
                            if send(&mut write, &Notice::Lost { count }).await.is_err() { break; }
                        }
                        Err(RecvError::Closed) => break,
                    },
                    // The client hung up (or sent more): stop.
                    _ = lines.next_line() => break,
                }
            }
            Ok(())
        }
        Err(message) => send(&mut write, &Notice::Error { message }).await,
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin client went away");
    }
}

async fn send<T: serde::Serialize>(write: &mut tokio::net::unix::OwnedWriteHalf, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
