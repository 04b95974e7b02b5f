//! Serves the admin socket: created root-owned with mode 0600 before anyone can connect.
//! Every client is bounded. A client first waits to send its request line (of bounded
//! length, within a deadline: `protocol`); at most `MAX_WAITING` wait at once, and a new
//! client closes the one waiting longest, so a crowd of idle connections cannot keep a real
//! client out. At most `MAX_SERVED` requests are served at once (observers stay for long),
//! and a response a client does not take within `WRITE_TIMEOUT` ends its connection. So
//! neither many clients, an endless line nor a reader that never reads can hold the agent's
//! memory or tasks.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, Semaphore};

use super::{protocol, status, AdminError, Notice, Request};
use super::shared::Shared;

/// Clients waiting to send their request line at once.
pub const MAX_WAITING: usize = 64;
/// Requests served at once (status reports, observers).
pub const MAX_SERVED: usize = 64;
/// A response line (or an observed event) not taken by the client within this ends it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    tokio::spawn(accept(listener, shared));
    Ok(())
}

/// The clients waiting to send their request, oldest first, each with the signal that
/// closes it.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, Arc<Notify>)>,
}

impl Waiting {
    /// Takes a new client in, closing the oldest waiting one when full.
    fn enter(&mut self) -> (u64, Arc<Notify>) {
        if self.queue.len() >= MAX_WAITING {
            if let Some((_, oldest)) = self.queue.pop_front() {
                oldest.notify_one();
            }
        }
        self.next += 1;
        let close = Arc::new(Notify::new());
        self.queue.push_back((self.next, close.clone()));
        (self.next, close)
    }

    fn leave(&mut self, id: u64) {
        self.queue.retain(|(waiting, _)| *waiting != id);
    }
}

struct Clients {
    waiting: Mutex<Waiting>,
    served: Arc<Semaphore>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: UnixListener, shared: Arc<Shared>) {
    let clients = Arc::new(Clients { waiting: Mutex::new(Waiting::default()), served: Arc::new(Semaphore::new(MAX_SERVED)) });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, shared.clone(), clients.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the request line, unless newer clients push this one out first.
async fn request(read: &mut BufReader<OwnedReadHalf>, clients: &Clients) -> Result<Option<Request>, (&'static str, String)> {
    let (id, closed) = lock(&clients.waiting).enter();
    let request = tokio::select! {
        request = protocol::read_request(read) => request.map_err(|message| ("bad-request", message)),
        _ = closed.notified() => Err(("too-many-clients", format!("too many clients waiting to send a request (more than {MAX_WAITING}); the one waiting longest was closed"))),
    };
    lock(&clients.waiting).leave(id);
    request
}

async fn serve(stream: UnixStream, shared: Arc<Shared>, clients: Arc<Clients>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let request = match request(&mut read, &clients).await {
        Ok(None) => return,
        Ok(Some(request)) => match clients.served.clone().try_acquire_owned() {
            Ok(slot) => Ok((request, slot)),
            Err(_) => Err(("too-many-clients", format!("too many requests served (at most {MAX_SERVED} at once); try again"))),
        },
        Err(refusal) => Err(refusal),
    };
    let result = match request {
        Ok((Request::Status, _slot)) => {
            let shared = shared.clone();
            match tokio::task::spawn_blocking(move || status::report(&shared)).await {
                Ok(report) => send(&mut write, &report).await,
                Err(error) => send(&mut write, &Notice::Error { message: format!("building the status: {error}") }).await,
            }
        }
        Ok((Request::Observe(filter), _slot)) => observe(read.into_inner(), write, &shared, &filter).await,
        Err((reason, message)) => {
            shared.metrics.admin_refused(reason);
            send(&mut write, &Notice::Error { message }).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin client went away");
    }
}

/// Streams matching events until the client hangs up, sends anything more, or stops reading.
async fn observe(mut read: OwnedReadHalf, mut write: OwnedWriteHalf, shared: &Shared, filter: &crate::events::filter::Filter) -> std::io::Result<()> {
    let mut events = shared.hub.subscribe();
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) if filter.matches(&event) => send(&mut write, &*event).await?,
                Ok(_) => {}
                Err(RecvError::Lagged(count)) => {
                    shared.losses.observer_lagged(count);
                    send(&mut write, &Notice::Lost { count }).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            // The client hung up (or sent more, which nothing asks for): stop.
            _ = read.read(&mut scratch) => return Ok(()),
        }
    }
}

/// Writes one JSON line; a client that does not take it within `WRITE_TIMEOUT` is dropped.
async fn send<T: serde::Serialize>(write: &mut OwnedWriteHalf, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_client_closes_the_one_waiting_longest() {
        let mut waiting = Waiting::default();
        let first: Vec<(u64, Arc<Notify>)> = (0..MAX_WAITING).map(|_| waiting.enter()).collect();
        let (id, _) = waiting.enter();
        assert_eq!(waiting.queue.len(), MAX_WAITING);
        assert_eq!(waiting.queue.front().map(|(id, _)| *id), Some(first[1].0), "the oldest is gone");
        // The oldest was signalled (its notified() completes at once), the next was not.
        assert!(futures::FutureExt::now_or_never(first[0].1.notified()).is_some());
        assert!(futures::FutureExt::now_or_never(first[1].1.notified()).is_none());
        waiting.leave(id);
        waiting.leave(first[5].0);
        assert_eq!(waiting.queue.len(), MAX_WAITING - 2);
    }
}
