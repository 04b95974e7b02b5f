//! A flow as an operator names it on the command line: its ends (`namespace/pod`), what it
//! is aimed at (a port with its protocol, or ICMP) and its address family. `moat explain`
//! and the lab's probes share these spellings.

use super::objects::{PodKey, Protocol};

/// Parses `namespace/pod` (a clap value parser).
pub fn parse_pod(text: &str) -> Result<PodKey, String> {
    PodKey::parse(text).ok_or_else(|| format!("{text:?} is not NAMESPACE/POD"))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    #[value(name = "4")]
    V4,
    #[value(name = "6")]
    V6,
}

/// What to probe: a port with its protocol, or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Port(u16, Protocol),
    Icmp,
}

impl Target {
    /// `80`, `80/TCP`, `53/udp`, `9000/SCTP` or `icmp`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("icmp") {
            return Ok(Self::Icmp);
        }
        let (port, protocol) = match text.split_once('/') {
            Some((port, protocol)) => (port, protocol),
            None => (text, "TCP"),
        };
        let protocol = Protocol::parse(&protocol.to_ascii_uppercase())
            .ok_or_else(|| format!("{text:?}: protocol must be TCP, UDP or SCTP"))?;
        let port: u16 =
            port.parse().ok().filter(|port| *port != 0).ok_or_else(|| {
                format!("{text:?}: want PORT[/PROTOCOL] with PORT 1-65535, or icmp")
            })?;
        Ok(Self::Port(port, protocol))
    }

    pub fn port(self) -> u16 {
        match self {
            Self::Port(port, _) => port,
            Self::Icmp => 0,
        }
    }

    pub fn protocol(self) -> &'static str {
        match self {
            Self::Port(_, protocol) => protocol.as_str(),
            Self::Icmp => "ICMP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_parsed() {
        assert_eq!(parse_pod("ns/p").unwrap(), PodKey::new("ns", "p"));
        assert!(parse_pod("nope").is_err());
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("80"), Ok(Target::Port(80, Protocol::Tcp)));
        assert_eq!(Target::parse("80/TCP"), Ok(Target::Port(80, Protocol::Tcp)));
        assert_eq!(Target::parse("53/udp"), Ok(Target::Port(53, Protocol::Udp)));
        assert_eq!(
            Target::parse("9000/Sctp"),
            Ok(Target::Port(9000, Protocol::Sctp))
        );
        assert_eq!(Target::parse("ICMP"), Ok(Target::Icmp));
        for bad in ["0", "70000", "80/icmp", "x", "", "80/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
