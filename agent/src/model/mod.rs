//! The cluster as moat sees it: plain data, no I/O. Sources build it, the compiler reads it.

pub mod change;
pub mod cidr;
pub mod cluster;
pub mod cnp;
pub mod cnp_eval;
pub mod flow;
pub mod intern;
pub mod labels;
pub mod objects;
pub mod pod_tag;
pub mod policy;
pub mod selector;
pub mod tenant;

pub use change::Change;
pub use cidr::Cidr;
pub use cluster::Cluster;
pub use labels::Labels;
pub use objects::{shared_ports, ContainerPort, ContainerPorts, Namespace, Node, ObjectKey, Pod, PodKey, Protocol, Service};
pub use tenant::{TenantId, TenantName};
