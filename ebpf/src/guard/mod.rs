//! The runtime guard's kernel side: blocking hooks that need no BPF LSM (cgroup/sysctl,
//! cgroup/dev, cgroup/connect_unix and the connect hooks in `main.rs`) and the detection
//! probes (`probes`: BPF LSM, fentry or syscall tracepoints, whichever the kernel runs).

mod actor;
mod args;
mod bytes;
pub mod device;
mod file;
mod kernel;
mod kubelet_api;
mod mount;
pub mod probes;
mod report;
mod security;
pub mod sysctl;
mod syscalls;
pub mod unix_connect;

pub use kubelet_api::kubelet_port;
