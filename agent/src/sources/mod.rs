//! TODO
pub mod manifests;
