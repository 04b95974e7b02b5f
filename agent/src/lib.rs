//! moat: tenant isolation and runtime guard for shared Kubernetes nodes.
//!
//! Data flows one way: `sources` → `model` → `compiler` → `kernel` → `events` → `sinks`;
//! `observability` wires the pipeline, sinks, metrics and the `admin` socket; `cli` holds the
//! admin clients (`moat observe`, `moat status`).
//! `node` knows the machine (cgroup v2 layout, bpffs); `lab` is the local playground.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod compiler;
pub mod config;
pub mod config_watch;
pub mod events;
pub mod explain;
pub mod explain_dns;
pub mod guard;
pub mod kernel;
pub mod lab;
pub mod model;
pub mod node;
pub mod observability;
pub mod runtime;
pub mod sinks;
pub mod sources;
