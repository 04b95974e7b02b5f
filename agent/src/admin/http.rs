//! `/metrics` (OpenMetrics text, refreshed from the pinned maps on every scrape),
//! `/healthz` (the agent runs) and `/readyz` (the first full sync reached the kernel).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::AdminError;
use super::shared::Shared;
use crate::sinks::metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more are closed at once (counted).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers (also an idle keep-alive connection's).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it does, so a client that stops reading a
/// response cannot hold its slot.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A restarted agent may find its port still held by the agent before it, whose last
/// threads are still closing its kernel objects: it waits this long for the port.
const BIND_PATIENCE: Duration = Duration::from_secs(10);

async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    loop {
        match TcpListener::bind(address).await {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tracing::warn!(address, "metrics address in use; waiting for it to be released");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

/// Binds `address` and serves on a spawned task; returns the bound address (port 0 picks one).
pub async fn start(address: &str, shared: Arc<Shared>) -> Result<SocketAddr, AdminError> {
    let error = |source| AdminError::Http { address: address.into(), source };
    let listener = bind(address).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "metrics server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                shared.metrics.refusals.get_or_create(&metrics::RefusalLabels { server: "http".into(), reason: "too-many-clients".into() }).inc();
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(request, shared.clone()));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    Ok(Err(error)) => tracing::debug!(%error, "metrics connection ended with an error"),
                    Err(_) => tracing::debug!("metrics connection closed after its lifetime"),
                    Ok(Ok(())) => {}
                }
                drop(slot);
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle<B>(request: Request<B>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    // Prometheus asks for OpenMetrics; everything else gets the classic text format.
    let openmetrics = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    Ok(match request.uri().path() {
        "/metrics" => {
            let rendered = tokio::task::spawn_blocking(move || {
                shared.refresh();
                shared.metrics.render()
            })
            .await;
            match rendered {
                Ok(Ok(body)) if openmetrics => reply(StatusCode::OK, OPENMETRICS, body),
                Ok(Ok(body)) => reply(StatusCode::OK, PROMETHEUS_TEXT, metrics::to_prometheus_text(&body)),
                Ok(Err(error)) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, format!("encoding metrics: {error}\n")),
                Err(error) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, format!("reading metrics: {error}\n")),
            }
        }
        "/healthz" => reply(StatusCode::OK, text, "ok\n".into()),
        "/readyz" if shared.ready() => reply(StatusCode::OK, text, "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, text, "not ready: the first sync has not reached the kernel\n".into()),
        _ => reply(StatusCode::NOT_FOUND, text, "not found; try /metrics, /healthz or /readyz\n".into()),
    })
}
