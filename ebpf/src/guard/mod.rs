//! The runtime guard's kernel side. Blocking hooks that need no BPF LSM (cgroup/sysctl,
//! cgroup/dev, the connect hooks in `main.rs`) and detection tracepoints (raw sys_enter,
//! sys_exit, sched_process_fork) for everything else.

mod actor;
mod bytes;
pub mod device;
mod file;
mod kernel;
mod kubelet_api;
pub mod lsm;
mod mount;
mod report;
pub mod sysctl;
pub mod syscall;
pub mod unix_connect;

pub use kubelet_api::kubelet_port;
