//! The kernel side: bpffs, loading and attaching the programs, writing the maps.

pub mod bpffs;
pub mod capabilities;
pub mod btf_layout;
pub mod cgroup_link;
pub mod dns_tcp;
pub mod event_budgets;
pub mod guard_probes;
pub mod loader;
pub mod maps;
#[cfg(test)]
mod object_calls;
pub mod flow_count;
pub mod stats;
pub mod tc;
pub mod tc_pods;
pub mod tracepoint;
pub mod unix_connect;

pub use btf_layout::{kernel_layout, load as load_kernel_layout, Btf, LayoutError};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("bpffs at {path}: {message}")]
    Bpffs { path: PathBuf, message: String },
    #[error("loading the eBPF object (pins in {pin_dir}): {source}")]
    Load { pin_dir: PathBuf, source: Box<aya::EbpfError> },
    #[error("program {program} ({hook}): {message}")]
    Program { program: &'static str, hook: &'static str, message: String },
    #[error("pods' cgroup root {path}: {source}")]
    CgroupRoot { path: PathBuf, source: std::io::Error },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("link pin {path}: {message}")]
    LinkPin { path: PathBuf, message: String },
}

/// `e` and every error below it, so a failed syscall shows its errno.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl KernelError {
    pub(crate) fn map(map: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Map { map, message: error.to_string() }
    }
}
