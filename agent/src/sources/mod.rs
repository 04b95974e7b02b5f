//! Policy sources: translate the outside world into the model.
pub mod manifests;
pub mod watch;
