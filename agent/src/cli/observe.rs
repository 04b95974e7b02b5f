//! `moat observe`: follows flows and detections live, like `hubble observe`.

use std::io::Write;

use serde_json::Value;

use super::{clock, connect, CliError, Format, Target};
use crate::admin::Request;
use crate::events::filter::Filter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictArg {
    Deny,
    Allow,
}

#[derive(clap::Args, Debug)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only events with this tenant at either end.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only events with this namespace at either end.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events with this pod (NAMESPACE/POD) at either end.
    #[arg(long, value_parser = crate::model::flow::parse_pod)]
    pub pod: Option<crate::model::PodKey>,
    /// Only flows with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Only detections with this id.
    #[arg(long)]
    pub detection: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Format,
    /// Stop after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
}

impl ObserveArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.as_ref().map(ToString::to_string),
            verdict: self.verdict.map(|v| if v == VerdictArg::Deny { "deny" } else { "allow" }.into()),
            detection: self.detection.clone(),
        }
    }
}

pub fn run(args: ObserveArgs) -> Result<(), CliError> {
    let mut connection = connect(&args.target, &Request::Observe(args.filter()))?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0;
    while let Some(value) = connection.next_value()? {
        let line = match args.output {
            Format::Json => value.to_string(),
            Format::Text => text(&value),
        };
        // A closed stdout (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        if value["type"] != "lost" {
            seen += 1;
        }
        if args.max_events.is_some_and(|max| seen >= max) {
            break;
        }
    }
    Ok(())
}

fn s<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("-")
}

fn end(value: &Value) -> String {
    let place = match (value["namespace"].as_str(), value["pod"].as_str()) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => "?".into(),
    };
    let tenant = value["tenant"].as_str().unwrap_or("no tenant");
    let port = value["port"].as_u64().unwrap_or(0);
    match value["ip"].as_str() {
        Some(ip) if ip.contains(':') => format!("{place} ({tenant}) [{ip}]:{port}"),
        Some(ip) => format!("{place} ({tenant}) {ip}:{port}"),
        None if port != 0 => format!("{place} ({tenant}) :{port}"),
        None => format!("{place} ({tenant})"),
    }
}

/// One readable line per event.
pub fn text(value: &Value) -> String {
    let time = clock(value["time_unix_ms"].as_u64().unwrap_or(0));
    let spread = &value["spread"];
    let count = match value["count"].as_u64() {
        Some(n) if spread.is_object() => format!(
            " (flood: x{n} in the window to {} ports {}-{} on {} addresses)",
            spread["remote_ports"], spread["remote_port_min"], spread["remote_port_max"], spread["remote_addresses"]
        ),
        Some(n) if value["aggregated"] == true => format!(" (x{n} more in the window)"),
        _ => String::new(),
    };
    match value["type"].as_str() {
        Some("flow") => format!(
            "{time} {} {} {} {:<4} {} -> {} rule={}{count}",
            s(value, "verdict").to_uppercase(),
            s(value, "direction"),
            s(value, "hook"),
            s(value, "protocol"),
            end(&value["src"]),
            end(&value["dst"]),
            s(value, "rule"),
        ),
        Some("detection") => format!(
            "{time} DETECTION {} mode={} {}/{} ({}) {}{count}",
            s(value, "id"),
            s(value, "mode"),
            s(value, "namespace"),
            s(value, "pod"),
            value["tenant"].as_str().unwrap_or("no tenant"),
            s(value, "message"),
        ),
        Some("lost") => format!("!! this observer missed {} events (too slow)", value["count"]),
        Some("dropped") => {
            let whose = match (value["namespace"].as_str(), value["pod"].as_str(), value["tenant"].as_str()) {
                (Some(ns), Some(pod), tenant) => format!("pod {ns}/{pod} ({})", tenant.unwrap_or("no tenant")),
                (_, _, Some(tenant)) => format!("tenant {tenant}"),
                _ => "the node".into(),
            };
            let what = value["detection"].as_str().unwrap_or(s(value, "events"));
            format!("{time} DROPPED {} {what} events of {whose} ({}: {})", value["count"], s(value, "stage"), s(value, "reason"))
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_names_both_ends() {
        let value = serde_json::json!({
            "time_unix_ms": 3_723_004u64, "count": 5, "aggregated": true, "type": "flow",
            "verdict": "deny", "direction": "egress", "hook": "connect", "protocol": "TCP", "rule": "tenant-floor",
            "src": {"tenant": "alpha", "namespace": "a1", "pod": "web", "ip": "10.0.0.1", "port": 40000},
            "dst": {"tenant": "beta", "namespace": "b1", "pod": "db", "ip": "fd00::2", "port": 80},
        });
        assert_eq!(
            text(&value),
            "01:02:03.004 DENY egress connect TCP  a1/web (alpha) 10.0.0.1:40000 -> b1/db (beta) [fd00::2]:80 rule=tenant-floor (x5 more in the window)"
        );
    }

    #[test]
    fn text_lines_for_floods_and_drops() {
        let flood = serde_json::json!({
            "time_unix_ms": 0u64, "count": 900, "aggregated": true, "type": "flow",
            "spread": {"remote_ports": 900, "remote_port_min": 1000, "remote_port_max": 1899, "remote_addresses": 1},
            "verdict": "deny", "direction": "egress", "hook": "connect", "protocol": "TCP", "rule": "tenant-floor",
            "src": {"tenant": "beta", "namespace": "b1", "pod": "scan", "ip": null, "port": 0},
            "dst": {"tenant": "alpha", "namespace": "a1", "pod": null, "ip": null, "port": 0},
        });
        assert!(text(&flood).ends_with("(flood: x900 in the window to 900 ports 1000-1899 on 1 addresses)"), "{}", text(&flood));
        let dropped = serde_json::json!({
            "time_unix_ms": 0u64, "count": 23000, "aggregated": false, "type": "dropped",
            "tenant": "beta", "namespace": null, "pod": null, "events": "deny", "stage": "kernel", "reason": "over-budget",
        });
        assert_eq!(text(&dropped), "00:00:00.000 DROPPED 23000 deny events of tenant beta (kernel: over-budget)");
    }
}
