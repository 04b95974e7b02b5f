//! A cluster DNS for the lab that answers as CoreDNS's kubernetes plugin does, from a JSON
//! description of Services and pods: `<svc>.<ns>.svc.<zone>` (A, AAAA, SRV, ANY; `*` and
//! `any` as wildcards for the service and namespace labels), `<a-b-c-d>.<ns>.pod.<zone>`
//! (pods verified), and PTR of Service and pod addresses. Anything else: NXDOMAIN (no
//! upstream in the lab). UDP and TCP on the same port.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;

use serde::Deserialize;

use crate::wire::{self, Record};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub zone: String,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub pods: Vec<Pod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub namespace: String,
    pub ip: IpAddr,
}

pub fn serve(data_file: &Path, port: u16) -> Result<(), String> {
    let text = std::fs::read_to_string(data_file).map_err(|e| format!("{}: {e}", data_file.display()))?;
    let data: Data = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", data_file.display()))?;
    let data: &'static Data = Box::leak(Box::new(data));
    // Dual-stack sockets: IPv4 clients arrive as IPv4-mapped addresses.
    let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).map_err(|e| format!("bind UDP {port}: {e}"))?;
    let tcp = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).map_err(|e| format!("bind TCP {port}: {e}"))?;
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            std::thread::spawn(move || serve_tcp(data, stream));
        }
    });
    println!("{{\"serving\":{port}}}");
    let mut buffer = [0u8; 4096];
    loop {
        let (len, from) = udp.recv_from(&mut buffer).map_err(|e| format!("recv: {e}"))?;
        if let Some(reply) = respond(data, &buffer[..len]) {
            let _ = udp.send_to(&reply, from);
        }
    }
}

fn serve_tcp(data: &Data, mut stream: TcpStream) {
    let mut length = [0u8; 2];
    while stream.read_exact(&mut length).is_ok() {
        let mut message = vec![0u8; u16::from_be_bytes(length) as usize];
        if stream.read_exact(&mut message).is_err() {
            return;
        }
        let Some(reply) = respond(data, &message) else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// The reply to one message; `None` for what is not a query at all (too short).
pub fn respond(data: &Data, message: &[u8]) -> Option<Vec<u8>> {
    if message.len() < 12 || message[2] & 0x80 != 0 {
        return None;
    }
    let Some((name, qtype, end)) = wire::question(message) else {
        let mut reply = message[..12].to_vec();
        reply[2] = 0x80;
        reply[3] = wire::RCODE_FORMERR;
        reply[4..12].fill(0);
        return Some(reply);
    };
    let (rcode, answers) = answer(data, &name, qtype);
    Some(wire::reply(message, end, rcode, &answers))
}

fn wildcard(label: &str) -> bool {
    label == "*" || label == "any"
}

pub fn answer(data: &Data, name: &str, qtype: u16) -> (u8, Vec<Record>) {
    let nxdomain = (wire::RCODE_NXDOMAIN, Vec::new());
    if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
        return match (qtype, from_reverse(name)) {
            (wire::TYPE_PTR, Some(ip)) => match owner_of(data, ip) {
                Some(target) => (wire::RCODE_NOERROR, vec![Record::Name(target)]),
                None => nxdomain,
            },
            _ => nxdomain,
        };
    }
    let Some(rest) = name.strip_suffix(&format!(".{}", data.zone)) else { return nxdomain };
    let labels: Vec<&str> = rest.split('.').collect();
    let n = labels.len();
    if n < 2 {
        return nxdomain;
    }
    let (kind, namespace, first) = (labels[n - 1], labels[n - 2], n.checked_sub(3).map(|i| labels[i]));
    let ns_matches = |ns: &str| wildcard(namespace) || ns == namespace;
    match kind {
        "svc" => {
            let Some(service) = first else {
                let exists = data.services.iter().any(|s| ns_matches(&s.namespace)) || data.pods.iter().any(|p| ns_matches(&p.namespace));
                return if exists { (wire::RCODE_NOERROR, Vec::new()) } else { nxdomain };
            };
            let matching: Vec<&Service> = data
                .services
                .iter()
                .filter(|s| ns_matches(&s.namespace) && (wildcard(service) || s.name == service))
                .collect();
            if matching.is_empty() {
                return nxdomain;
            }
            let records = matching
                .iter()
                .flat_map(|s| {
                    let target = format!("{}.{}.svc.{}", s.name, s.namespace, data.zone);
                    let addresses = s.ips.iter().filter(move |ip| match qtype {
                        wire::TYPE_A => ip.is_ipv4(),
                        wire::TYPE_AAAA => ip.is_ipv6(),
                        wire::TYPE_ANY => true,
                        _ => false,
                    });
                    let srv = (qtype == wire::TYPE_SRV).then_some(Record::Srv(target));
                    addresses.map(|ip| Record::Address(*ip)).chain(srv).collect::<Vec<_>>()
                })
                .collect();
            (wire::RCODE_NOERROR, records)
        }
        "pod" => {
            let Some(ip) = first.and_then(from_dashed) else { return nxdomain };
            let known = data.pods.iter().any(|p| p.ip == ip && ns_matches(&p.namespace));
            let wanted = match qtype {
                wire::TYPE_A => ip.is_ipv4(),
                wire::TYPE_AAAA => ip.is_ipv6(),
                _ => false,
            };
            match (known, wanted) {
                (false, _) => nxdomain,
                (true, true) => (wire::RCODE_NOERROR, vec![Record::Address(ip)]),
                (true, false) => (wire::RCODE_NOERROR, Vec::new()),
            }
        }
        _ => nxdomain,
    }
}

fn owner_of(data: &Data, ip: IpAddr) -> Option<String> {
    if let Some(s) = data.services.iter().find(|s| s.ips.contains(&ip)) {
        return Some(format!("{}.{}.svc.{}", s.name, s.namespace, data.zone));
    }
    let pod = data.pods.iter().find(|p| p.ip == ip)?;
    let dashed = ip.to_string().replace(['.', ':'], "-");
    Some(format!("{dashed}.{}.pod.{}", pod.namespace, data.zone))
}

/// `10-0-0-1` → 10.0.0.1; `fd00--1` → fd00::1.
fn from_dashed(label: &str) -> Option<IpAddr> {
    label
        .replace('-', ".")
        .parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| label.replace('-', ":").parse::<Ipv6Addr>().map(IpAddr::V6))
        .ok()
}

fn from_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest.split('.').map(|l| l.parse().ok()).collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest.split('.').map(|l| u8::from_str_radix(l, 16).ok().filter(|n| *n < 16)).collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        octets[i] = pair[1] << 4 | pair[0];
    }
    Some(IpAddr::V6(Ipv6Addr::from(octets)))
}
