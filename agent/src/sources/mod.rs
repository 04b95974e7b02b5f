//! Where the cluster comes from: manifest files on disk, re-read when they change.

pub mod manifests;
pub mod watch;
