//! Floods of distinct flow events — a scan of many ports, of many peers — folded into one
//! counted report per window. Events of one *shape* (the same verdict, hook, protocol, rule,
//! local pod and remote tenant and namespace; any remote pod, address and ports) are reported
//! one by one up to a threshold per window; beyond it they are counted, with how many remote
//! ports (and which range) and addresses they touched. A quiet pod never reaches the
//! threshold, so its events stay individual; a scan costs one line per window.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;


use super::deny::DenyRecord;
use super::record::{now_unix_ms, Event, Payload, Spread};

/// Distinct remote addresses remembered per flood; beyond, the count is a lower bound.
pub const MAX_ADDRESSES: usize = 4096;

/// The shape of a flow event, and its remote port and address.
pub fn shape(record: &DenyRecord) -> (DenyRecord, u16, Option<IpAddr>) {
    let mut shape = record.clone();
    let ingress = record.direction == "ingress";
    let remote = if ingress { &record.src } else { &record.dst };
    let (port, ip) = (remote.port, remote.ip);
    shape.src.port = 0;
    shape.dst.port = 0;
    let remote = if ingress {
        &mut shape.src
    } else {
        &mut shape.dst
    };
    remote.ip = None;
    remote.pod = None;
    (shape, port, ip)
}

/// One shape's events in one window.
pub struct Flood {
    pub opened: Instant,
    /// Events of the shape seen in the window (folded ones included).
    pub seen: usize,
    folded: u64,
    /// One bit per port, allocated once the flood folds.
    ports: Option<Box<[u64; 1024]>>,
    port_min: u16,
    port_max: u16,
    addresses: HashSet<IpAddr>,
    shape: DenyRecord,
}

impl Flood {
    pub fn new(shape: DenyRecord, opened: Instant) -> Self {
        Self {
            opened,
            seen: 0,
            folded: 0,
            ports: None,
            port_min: u16::MAX,
            port_max: 0,
            addresses: HashSet::new(),
            shape,
        }
    }

    /// Counts `count` events to `port` at `ip` into the report.
    pub fn fold(&mut self, port: u16, ip: Option<IpAddr>, count: u64) {
        self.folded += count;
        let ports = self.ports.get_or_insert_with(|| Box::new([0; 1024]));
        ports[usize::from(port / 64)] |= 1 << (port % 64);
        self.port_min = self.port_min.min(port);
        self.port_max = self.port_max.max(port);
        if let Some(ip) = ip {
            if self.addresses.len() < MAX_ADDRESSES {
                self.addresses.insert(ip);
            }
        }
    }

    /// The window's report, if anything was folded.
    pub fn report(self) -> Option<Event> {
        if self.folded == 0 {
            return None;
        }
        let remote_ports = self
            .ports
            .map_or(0, |bits| bits.iter().map(|word| word.count_ones()).sum());
        let mut event = Event::new(Payload::Flow(self.shape));
        event.count = self.folded;
        event.aggregated = true;
        event.time_unix_ms = now_unix_ms();
        event.spread = Some(Spread {
            remote_ports,
            remote_port_min: self.port_min,
            remote_port_max: self.port_max,
            remote_addresses: self.addresses.len() as u32,
        });
        Some(event)
    }
}
