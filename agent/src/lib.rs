//! moat: tenant isolation and runtime guard for shared Kubernetes nodes.
//!
//! Data flows one way: `sources` → `model` → `compiler` → `kernel` → `events` → sinks.
//! `node` knows the machine (cgroup v2 layout, bpffs); `lab` is the local playground.

pub mod bench;
pub mod compiler;
pub mod config;
pub mod events;
pub mod explain;
pub mod kernel;
pub mod lab;
pub mod model;
pub mod node;
pub mod runtime;
pub mod sources;
