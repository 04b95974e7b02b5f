//! Where events go: the JSON log on stdout (`log`), an optional rotated file (`file`),
//! Prometheus metrics (`metrics`) and Kubernetes Events for detections (`kube_events`).

pub mod file;
pub mod kube_events;
pub mod log;
pub mod metrics;
