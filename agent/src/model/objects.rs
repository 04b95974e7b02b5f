//! The objects of the cluster as moat keeps them: keys, namespaces, pods, Services, Nodes.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::labels::Labels;

/// Namespace and name of a namespaced object; printed `namespace/name`. The compiler and the
/// event index hold a pod's key in several maps: shared strings make each copy two pointers,
/// not two allocations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: namespace.as_ref().into(),
            name: name.as_ref().into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Self::new(namespace, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

pub type PodKey = ObjectKey;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => moat_common::IPPROTO_TCP,
            Self::Udp => moat_common::IPPROTO_UDP,
            Self::Sctp => moat_common::IPPROTO_SCTP,
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub uid: Option<String>,
    pub labels: Labels,
    /// status.podIPs (or status.podIP); empty until the pod has an address.
    pub ips: Vec<IpAddr>,
    /// Shared: a cluster has few nodes and many pods on each.
    pub node_name: Option<Arc<str>>,
    /// hostNetwork pods share the node's address, so their IPs never identify them.
    pub host_network: bool,
    /// hostPID pods share the node's PID namespace: being in it is not an escape.
    pub host_pid: bool,
    /// Shared: pods of one workload declare the same ports (`shared_ports`).
    pub ports: ContainerPorts,
}

/// A pod's container ports; equal lists are one allocation across the model.
pub type ContainerPorts = std::sync::Arc<[ContainerPort]>;

static PORTS: std::sync::Mutex<Option<super::intern::Interner<[ContainerPort]>>> = std::sync::Mutex::new(None);

/// The shared copy of `ports`: 2 named ports cost 144 bytes of heap per pod otherwise.
pub fn shared_ports(ports: Vec<ContainerPort>) -> ContainerPorts {
    super::intern::shared(&PORTS, ports.as_slice(), || ports.clone().into())
}

/// A Service, as far as moat reads it: the addresses its name resolves to in reverse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ObjectKey,
    /// spec.clusterIPs (or spec.clusterIP): none for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
}

/// A Node, as far as ClusterNetworkPolicy `nodes` peers need it: a selector picks Nodes by
/// their labels, and egress to their addresses is what the peer matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub labels: Labels,
    /// status.addresses of type InternalIP and ExternalIP, without duplicates.
    pub addresses: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_port_lists_are_one_allocation() {
        let port = |name: &str, port| ContainerPort { name: Some(name.into()), port, protocol: Protocol::Tcp };
        let a = shared_ports(vec![port("http", 8080), port("metrics", 9090)]);
        let b = shared_ports(vec![port("http", 8080), port("metrics", 9090)]);
        let other = shared_ports(vec![port("http", 8080)]);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(!std::sync::Arc::ptr_eq(&a, &other));
        assert_eq!(*other, [port("http", 8080)]);
    }
}
