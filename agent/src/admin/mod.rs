//! The agent's local admin API: a unix socket (root only, mode 0600) speaking newline-
//! delimited JSON — one request line, then a stream of response lines — for `moat observe`
//! and `moat status`; and the HTTP server for `/metrics`, `/healthz` and `/readyz`. Both serve
//! `shared::Shared`; `observability.rs`, above this module, creates it and starts them.

pub mod dns_status;
pub mod http;
pub mod protocol;
pub mod server;
pub mod shared;
pub mod status;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::events::filter::Filter;

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Stream events matching the filter until the client hangs up.
    Observe(Filter),
    /// One status report.
    Status,
}

/// A line in the observe stream that is not an event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Notice {
    /// This observer fell behind and missed `count` events.
    Lost { count: u64 },
    /// The request could not be served.
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {action}: {source}")]
    Socket { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("metrics address {address}: {source}")]
    Http { address: String, source: std::io::Error },
}
