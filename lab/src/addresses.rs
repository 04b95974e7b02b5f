//! Address assignment: every lab pod is dual-stack. Addresses given in the manifest win;
//! then a pod keeps what it had (on `apply`); then the next free address of the lab range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use moat_agent::model::PodKey;

/// 10.250.0.0/16.
pub const V4_BASE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 0);
pub const V4_PREFIX: u32 = 16;
/// fd6d:6f61:7400::/64 ("moat" in hex, more or less).
pub const V6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd6d, 0x6f61, 0x7400, 0, 0, 0, 0, 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodAddresses {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("pod {pod}: address {ip} is also given to pod {other}")]
    Duplicate {
        pod: String,
        other: String,
        ip: IpAddr,
    },
    #[error("the lab's IPv4 range {V4_BASE}/{V4_PREFIX} is full")]
    Exhausted,
}

/// Assigns addresses. `given` holds each pod's addresses from its manifest (any number, any
/// family); `previous` what pods had before; `avoid` addresses never handed out fresh (those
/// of pods about to be removed: reusing them at once would clash, and leave stale neighbour
/// entries). Deterministic: pods are taken in key order.
pub fn assign(
    given: &BTreeMap<PodKey, Vec<IpAddr>>,
    previous: &BTreeMap<PodKey, PodAddresses>,
    avoid: &BTreeSet<IpAddr>,
) -> Result<BTreeMap<PodKey, PodAddresses>, AddressError> {
    // Manifest addresses are reserved first, and must be unique.
    let mut owner: BTreeMap<IpAddr, &PodKey> = BTreeMap::new();
    for (pod, ips) in given {
        for ip in ips {
            if let Some(other) = owner.insert(*ip, pod) {
                if other != pod {
                    return Err(AddressError::Duplicate {
                        pod: pod.to_string(),
                        other: other.to_string(),
                        ip: *ip,
                    });
                }
            }
        }
    }
    let mut taken: BTreeSet<IpAddr> = owner.keys().copied().collect();
    let mut out = BTreeMap::new();
    let mut pending_v4 = Vec::new();
    let mut pending_v6 = Vec::new();
    for (pod, ips) in given {
        let old = previous.get(pod);
        let v4 = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let v6 = ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let v4 = v4.or_else(|| old.map(|o| o.v4).filter(|ip| taken.insert(IpAddr::V4(*ip))));
        let v6 = v6.or_else(|| old.map(|o| o.v6).filter(|ip| taken.insert(IpAddr::V6(*ip))));
        if v4.is_none() {
            pending_v4.push(pod.clone());
        }
        if v6.is_none() {
            pending_v6.push(pod.clone());
        }
        out.insert(pod.clone(), (v4, v6));
    }
    let mut fresh_taken: BTreeSet<IpAddr> = taken.union(avoid).copied().collect();
    let v4_base = u32::from(V4_BASE);
    let v4_size = 1u32 << (32 - V4_PREFIX);
    let mut next4 = 1u32;
    for pod in pending_v4 {
        let ip = loop {
            // Skip the network and broadcast addresses of the /16.
            if next4 >= v4_size - 1 {
                return Err(AddressError::Exhausted);
            }
            let ip = Ipv4Addr::from(v4_base + next4);
            next4 += 1;
            if fresh_taken.insert(IpAddr::V4(ip)) {
                break ip;
            }
        };
        if let Some(entry) = out.get_mut(&pod) {
            entry.0 = Some(ip);
        }
    }
    let v6_base = u128::from(V6_BASE);
    let mut next6 = 1u128;
    for pod in pending_v6 {
        let ip = loop {
            let ip = Ipv6Addr::from(v6_base + next6);
            next6 += 1;
            if fresh_taken.insert(IpAddr::V6(ip)) {
                break ip;
            }
        };
        if let Some(entry) = out.get_mut(&pod) {
            entry.1 = Some(ip);
        }
    }
    Ok(out
        .into_iter()
        .filter_map(|(pod, (v4, v6))| Some((pod, PodAddresses { v4: v4?, v6: v6? })))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PodKey {
        PodKey::new("ns", name)
    }

    #[test]
    fn assigns_sequentially_and_skips_taken() {
        let given: BTreeMap<_, _> = [
            (key("a"), vec![]),
            (key("b"), vec!["10.250.0.1".parse().unwrap()]),
            (key("c"), vec!["fd6d:6f61:7400::1".parse().unwrap()]),
        ]
        .into();
        let out = assign(&given, &BTreeMap::new(), &BTreeSet::new()).unwrap();
        assert_eq!(out[&key("a")].v4, Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(
            out[&key("a")].v6,
            "fd6d:6f61:7400::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(out[&key("b")].v4, Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(
            out[&key("b")].v6,
            "fd6d:6f61:7400::3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(out[&key("c")].v4, Ipv4Addr::new(10, 250, 0, 3));
        assert_eq!(
            out[&key("c")].v6,
            "fd6d:6f61:7400::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn existing_pods_keep_their_addresses() {
        let previous: BTreeMap<_, _> = [(
            key("b"),
            PodAddresses {
                v4: Ipv4Addr::new(10, 250, 0, 9),
                v6: "fd6d:6f61:7400::9".parse().unwrap(),
            },
        )]
        .into();
        let given: BTreeMap<_, _> = [(key("a"), vec![]), (key("b"), vec![])].into();
        let out = assign(&given, &previous, &BTreeSet::new()).unwrap();
        assert_eq!(out[&key("b")], previous[&key("b")]);
        assert_eq!(out[&key("a")].v4, Ipv4Addr::new(10, 250, 0, 1));
        let avoid: BTreeSet<IpAddr> = [
            "10.250.0.1".parse().unwrap(),
            "fd6d:6f61:7400::1".parse().unwrap(),
        ]
        .into();
        let out = assign(&given, &previous, &avoid).unwrap();
        assert_eq!(out[&key("a")].v4, Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(
            out[&key("a")].v6,
            "fd6d:6f61:7400::2".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn manifest_beats_previous_and_duplicates_are_errors() {
        let previous: BTreeMap<_, _> = [(
            key("a"),
            PodAddresses {
                v4: Ipv4Addr::new(10, 250, 0, 1),
                v6: "fd6d:6f61:7400::1".parse().unwrap(),
            },
        )]
        .into();
        // b now claims a's old address in its manifest: a moves.
        let given: BTreeMap<_, _> = [
            (key("a"), vec![]),
            (key("b"), vec!["10.250.0.1".parse().unwrap()]),
        ]
        .into();
        let out = assign(&given, &previous, &BTreeSet::new()).unwrap();
        assert_eq!(out[&key("b")].v4, Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(out[&key("a")].v4, Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(out[&key("a")].v6, previous[&key("a")].v6);

        let given: BTreeMap<_, _> = [
            (key("a"), vec!["10.0.0.1".parse().unwrap()]),
            (key("b"), vec!["10.0.0.1".parse().unwrap()]),
        ]
        .into();
        assert!(matches!(
            assign(&given, &BTreeMap::new(), &BTreeSet::new()),
            Err(AddressError::Duplicate { .. })
        ));
    }
}
