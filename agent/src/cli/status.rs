//! `moat status`: the agent's health at a glance.

use serde_json::Value;

use super::{connect, CliError, Format, Target};
use crate::admin::Request;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Format,
}

pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let mut connection = connect(&args.target, &Request::Status)?;
    let value = connection.next_value()?.ok_or_else(|| CliError::Response {
        path: connection.path.clone(),
        message: "closed without a status".into(),
    })?;
    match args.output {
        Format::Json => println!("{value}"),
        Format::Text => print!("{}", text(&value)),
    }
    Ok(())
}

pub fn text(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("instance   {}   ready: {}", v["instance"].as_str().unwrap_or("?"), v["ready"]));
    let caps = &v["capabilities"];
    line(format!(
        "kernel     BTF: {}   cgroup hooks: {}   cgroup/connect_unix: {}",
        if caps["btf"] == true { "present" } else { "missing" },
        caps["cgroup_hooks"].as_str().unwrap_or("?"),
        caps["cgroup_connect_unix"].as_str().unwrap_or("?")
    ));
    line(format!(
        "           BPF LSM: {}   fentry: {}   syscall tracepoints: {}",
        caps["bpf_lsm"].as_str().unwrap_or("?"),
        caps["trampolines"].as_str().unwrap_or("?"),
        caps["syscall_tracepoints"].as_str().unwrap_or("?")
    ));
    line("programs".into());
    for p in v["programs"].as_array().into_iter().flatten() {
        line(format!(
            "  {:<18} {:<20} attached: {:<5} pinned: {:<5} {}",
            p["program"].as_str().unwrap_or("?"),
            p["hook"].as_str().unwrap_or("?"),
            p["attached"],
            p["pinned"],
            p["pin"].as_str().unwrap_or("")
        ));
    }
    let icmp = &v["icmp"];
    if let Some(why) = icmp["unavailable"].as_str() {
        line(format!("  {:<18} {:<20} unavailable: {why}", icmp["program"].as_str().unwrap_or("?"), icmp["hook"].as_str().unwrap_or("?")));
    } else if icmp.is_object() {
        line(format!(
            "  {:<18} {:<20} on {} pods ({} interfaces, {}), waiting: {}, hostNetwork: {}, attach failures: {}",
            icmp["program"].as_str().unwrap_or("?"),
            icmp["hook"].as_str().unwrap_or("?"),
            icmp["pods_attached"],
            icmp["interfaces"],
            icmp["mode"].as_str().unwrap_or("?"),
            icmp["pods_waiting"],
            icmp["pods_host_network"],
            icmp["attach_failures"]
        ));
    }
    line("maps".into());
    for m in v["kernel"]["maps"].as_array().into_iter().flatten() {
        line(format!("  {:<18} {:>8} / {}", m["map"].as_str().unwrap_or("?"), m["entries"], m["capacity"]));
    }
    let sync = &v["sync"];
    let staleness = v["staleness_seconds"].as_f64().map(|s| format!("{s:.1} s ago")).unwrap_or_else(|| "never".into());
    line(format!(
        "sync       first sync reached the kernel: {}   last apply: {staleness}   generation {}   failures {}",
        sync["first_sync_done"], sync["generation"], sync["failures"]
    ));
    line(format!("detections {}", v["detections"]["note"].as_str().unwrap_or("")));
    for d in v["detections"]["configured"].as_array().into_iter().flatten() {
        line(format!("  {:<28} {:<7} {}", d["id"].as_str().unwrap_or("?"), d["effective"].as_str().unwrap_or("?"), d["note"].as_str().unwrap_or("")));
    }
    let node = &v["detections"]["node_files"];
    if let Some(root) = node["host_root"].as_str() {
        let missing: Vec<&str> = node["missing"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
        line(format!("node files {} protected, {} pod volumes, read below {root}", node["protected_files"], node["pod_volumes"]));
        if !missing.is_empty() {
            line(format!("  not found: {}", missing.join(", ")));
        }
        if let Some(warning) = node["warning"].as_str() {
            line(format!("  warning: {warning}"));
        }
    }
    line("probes".into());
    for p in v["probes"].as_array().into_iter().flatten() {
        let hooks: Vec<&str> = p["hooks"].as_array().into_iter().flatten().filter_map(|h| h.as_str()).collect();
        let how = match p["kind"].as_str() {
            Some(kind) => format!("{kind}: {}", hooks.join(", ")),
            None if p["needed"] == true => "not attached".to_string(),
            None => "not needed".to_string(),
        };
        line(format!("  {:<18} {how}", p["probe"].as_str().unwrap_or("?")));
    }
    let foreign = &v["detections"]["foreign_tenant"];
    if let Some(profile) = foreign["node_profile"].as_str() {
        let pods: Vec<&str> = foreign["pods"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
        let pods = if pods.is_empty() { "none".to_string() } else { pods.join(", ") };
        line(format!("node       reserved by {profile} ({}): foreign pods: {pods}", foreign["mode"].as_str().unwrap_or("?")));
    }
    line(format!("events     lost in the kernel: {}   lost in userspace: {}", v["events_lost"]["kernel"], v["events_lost"]["userspace"]));
    for loss in v["events_lost"]["by_tenant"].as_array().into_iter().flatten() {
        let tenant = loss["tenant"].as_str().filter(|t| !t.is_empty()).unwrap_or("(node)");
        line(format!(
            "  {tenant:<18} {:>10} {} events ({}, {})",
            loss["count"],
            loss["kind"].as_str().unwrap_or("?"),
            loss["stage"].as_str().unwrap_or("?"),
            loss["reason"].as_str().unwrap_or("?")
        ));
    }
    let unenforced = &v["unenforced_policies"];
    let lines: Vec<&str> = unenforced["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
    if unenforced["reported"] != true {
        line("policies   not reported yet (API discovery has not finished a round)".into());
    } else if lines.is_empty() {
        line("policies   no policy objects of kinds moat does not enforce".into());
    } else {
        line(format!("policies   NOT ENFORCED by moat ({}); traffic is decided without them:", lines.len()));
        for text in lines {
            line(format!("  {text}"));
        }
    }
    let dns = &v["dns"];
    let list = |key: &str| dns[key].as_array().into_iter().flatten().filter_map(|z| z.as_str()).collect::<Vec<_>>().join(", ");
    line(format!(
        "dns        isolation: {}   zones: {}   shared namespaces: {}   inspected: {}",
        dns["isolation"].as_str().unwrap_or("?"),
        list("zones"),
        list("shared_namespaces"),
        dns["inspected"].as_str().unwrap_or("?")
    ));
    if let Some(reason) = dns["tcp_unavailable"].as_str() {
        line(format!("           TCP questions pass unchecked on this kernel: {reason}"));
    }
    line(format!("metrics    {}", v["metrics_url"].as_str().unwrap_or("-")));
    out
}
