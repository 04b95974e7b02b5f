//! moat: tenant isolation and runtime guard for shared Kubernetes nodes.
//!
//! Data flows one way: `sources` → `model` → `compiler` → `kernel` → `events` → `sinks`;
//! `observability` wires the pipeline, sinks, metrics and the `admin` socket; `cli` holds the
//! admin clients (`moat observe`, `moat status`) and `moat lab`, which runs the separate
//! `moat-lab` binary (crate `lab/`, the local playground; not part of this crate).
//! `node` knows the machine (cgroup v2 layout, bpffs).

pub mod admin;
pub mod cli;
pub mod compiler;
pub mod config;
pub mod config_watch;
pub mod detections;
pub mod events;
pub mod explain;
pub mod explain_dns;
pub mod guard;
pub mod kernel;
pub mod model;
pub mod node;
pub mod observability;
pub mod runtime;
pub mod sinks;
pub mod sources;
#[cfg(test)]
mod test_rng;
