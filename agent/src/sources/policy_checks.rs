//! NetworkPolicy checks the API server makes and the typed decoding does not: a policy it
//! would refuse is refused at load time, where the error can still name file and field,
//! instead of being half-enforced later.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::Cidr;
use crate::model::{selector, Protocol};

/// `(field path, message)` of the first problem.
pub(crate) type Problem = (String, String);

pub(crate) fn validate(policy: &NetworkPolicy) -> Result<(), Problem> {
    let Some(spec) = &policy.spec else {
        return Ok(());
    };
    if let Some(pod_selector) = &spec.pod_selector {
        check_selector(pod_selector, "spec.podSelector")?;
    }
    for (index, kind) in spec.policy_types.iter().flatten().enumerate() {
        if kind != "Ingress" && kind != "Egress" {
            let message = format!("unknown policy type {kind:?} (want Ingress or Egress)");
            return Err((format!("spec.policyTypes[{index}]"), message));
        }
    }
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{index}]");
        check_peers(rule.from.as_deref(), &format!("{field}.from"))?;
        check_ports(rule.ports.as_deref(), &format!("{field}.ports"))?;
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{index}]");
        check_peers(rule.to.as_deref(), &format!("{field}.to"))?;
        check_ports(rule.ports.as_deref(), &format!("{field}.ports"))?;
    }
    Ok(())
}

fn check_selector(selector: &LabelSelector, field: &str) -> Result<(), Problem> {
    selector::validate(selector).map_err(|error| (field.to_string(), error.to_string()))
}

fn check_peers(peers: Option<&[NetworkPolicyPeer]>, field: &str) -> Result<(), Problem> {
    for (index, peer) in peers.into_iter().flatten().enumerate() {
        let field = format!("{field}[{index}]");
        let selectors = [
            ("podSelector", &peer.pod_selector),
            ("namespaceSelector", &peer.namespace_selector),
        ];
        for (name, selector) in selectors {
            if let Some(selector) = selector {
                check_selector(selector, &format!("{field}.{name}"))?;
            }
        }
        let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (None, false) => {
                return Err((
                    field,
                    "a peer needs podSelector, namespaceSelector or ipBlock".into(),
                ))
            }
            (Some(_), true) => {
                return Err((field, "ipBlock cannot be combined with a selector".into()))
            }
            (Some(block), false) => check_ip_block(block, &format!("{field}.ipBlock"))?,
            (None, true) => {}
        }
    }
    Ok(())
}

fn check_ip_block(block: &IPBlock, field: &str) -> Result<(), Problem> {
    let cidr: Cidr = block
        .cidr
        .parse()
        .map_err(|message| (format!("{field}.cidr"), message))?;
    for (index, text) in block.except.iter().flatten().enumerate() {
        let field = format!("{field}.except[{index}]");
        let except: Cidr = text.parse().map_err(|message| (field.clone(), message))?;
        if !strictly_within(&except, &cidr) {
            return Err((field, format!("{except} is not strictly inside {cidr}")));
        }
    }
    Ok(())
}

fn strictly_within(inner: &Cidr, outer: &Cidr) -> bool {
    let bits = |cidr: &Cidr| match cidr.addr {
        std::net::IpAddr::V4(addr) => (u128::from(u32::from(addr)) << 96, true),
        std::net::IpAddr::V6(addr) => (u128::from(addr), false),
    };
    let ((inner_bits, inner_v4), (outer_bits, outer_v4)) = (bits(inner), bits(outer));
    if inner_v4 != outer_v4 || inner.prefix_len <= outer.prefix_len {
        return false;
    }
    // Prefix lengths are bits of the family; shift IPv4 ones into the top 32 bits.
    let outer_len = u32::from(outer.prefix_len);
    let mask = if outer_len == 0 {
        0
    } else {
        u128::MAX << (128 - outer_len)
    };
    inner_bits & mask == outer_bits & mask
}

fn check_ports(ports: Option<&[NetworkPolicyPort]>, field: &str) -> Result<(), Problem> {
    for (index, port) in ports.into_iter().flatten().enumerate() {
        let field = format!("{field}[{index}]");
        if let Some(text) = &port.protocol {
            if Protocol::parse(text).is_none() {
                let message = format!("unknown protocol {text:?} (want TCP, UDP or SCTP)");
                return Err((format!("{field}.protocol"), message));
            }
        }
        let number = match &port.port {
            Some(IntOrString::Int(number)) => {
                if !(1..=65535).contains(number) {
                    return Err((
                        format!("{field}.port"),
                        format!("{number} is outside 1..=65535"),
                    ));
                }
                Some(*number)
            }
            Some(IntOrString::String(name)) => {
                if !is_port_name(name) {
                    let message = format!("{name:?} is not a port number or a valid port name");
                    return Err((format!("{field}.port"), message));
                }
                None
            }
            None => None,
        };
        if let Some(end) = port.end_port {
            let Some(start) = number else {
                return Err((format!("{field}.endPort"), "needs a numeric port".into()));
            };
            if end < start || end > 65535 {
                return Err((
                    format!("{field}.endPort"),
                    format!("{end} is outside {start}..=65535"),
                ));
            }
        }
    }
    Ok(())
}

/// An IANA service name, as container port names are: 1-15 of [a-z0-9-], at least one
/// letter, no hyphen at either end or twice in a row.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
