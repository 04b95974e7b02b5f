//! What a lab's agent attached, for the guard bench: `moat status` lists the pinned
//! programs; the guard's tracepoints are attached for the agent's lifetime without a pin, so
//! they are read from the BPF links the agent holds (/proc/PID/fdinfo). The same scan finds
//! other processes' tracepoints, which weigh on every configuration of the bench alike.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::util::{render, stdout_of};


/// What `moat status` says about the lab's agent.
pub struct AgentStatus {
    /// Attached programs, `name (hook)`.
    pub programs: Vec<String>,
    /// Each detection's id and effective mode.
    pub detections: Vec<(String, String)>,
}

pub fn agent_status(moat: &Path, lab: &str) -> Result<AgentStatus> {
    let mut cmd = Command::new(moat);
    cmd.args(["status", "--lab", lab, "-o", "json"]);
    eprintln!("$ {}", render(&cmd));
    let status: Value = serde_json::from_str(stdout_of(&mut cmd)?.trim()).context("`moat status -o json` printed no JSON")?;
    let mut programs: Vec<String> = status["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["attached"] == true)
        .map(|p| format!("{} ({})", p["program"].as_str().unwrap_or("?"), p["hook"].as_str().unwrap_or("?")))
        .collect();
    // Links the agent holds without a pin (the guard's tracepoints) are not in the status.
    let pid = lab_agent_pid(moat, lab)?.context("the lab's agent is not running")?;
    let unpinned = held_by(pid).into_iter().filter(|link| link.description != "cgroup");
    programs.extend(unpinned.map(|link| format!("{} (held by the agent)", link.description)));
    let detections: Vec<(String, String)> = status["detections"]["configured"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["id"].as_str()?.to_string(), d["effective"].as_str()?.to_string())))
        .collect();
    if detections.is_empty() {
        bail!("`moat status` lists no detections: {status}");
    }
    Ok(AgentStatus { programs, detections })
}

/// The pid of the lab's agent, if it runs.
pub fn lab_agent_pid(moat: &Path, lab: &str) -> Result<Option<u32>> {
    let mut cmd = Command::new(moat);
    cmd.args(["lab", "status", "--name", lab, "-o", "json"]);
    let state: Value = serde_json::from_str(stdout_of(&mut cmd)?.trim()).context("`moat lab status -o json` printed no JSON")?;
    let alive = state["agent"]["alive"] == true;
    Ok(state["agent"]["pid"].as_u64().filter(|_| alive).and_then(|pid| u32::try_from(pid).ok()))
}

/// One link: its type and what it is attached to (`raw_tracepoint sys_enter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub pid: u32,
    pub description: String,
}

/// Every BPF link process `pid` holds an fd of.
pub fn held_by(pid: u32) -> Vec<Link> {
    let fds = Path::new("/proc").join(pid.to_string()).join("fd");
    let Ok(entries) = std::fs::read_dir(&fds) else { return Vec::new() };
    let mut links = Vec::new();
    for entry in entries.flatten() {
        let is_link = std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link");
        if !is_link {
            continue;
        }
        let info = fds.with_file_name("fdinfo").join(entry.file_name());
        if let Ok(text) = std::fs::read_to_string(info) {
            links.push(Link { pid, description: describe(&text) });
        }
    }
    links.sort_by(|a, b| a.description.cmp(&b.description));
    links
}

/// Raw tracepoint links held by any process but `except`.
pub fn raw_tracepoints_elsewhere(except: Option<u32>) -> Vec<Link> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != except && *pid != std::process::id())
        .flat_map(held_by)
        .filter(|link| link.description.starts_with("raw_tracepoint"))
        .collect()
}

/// `link_type` and, for a raw tracepoint, `tp_name`, from a link's fdinfo.
fn describe(fdinfo: &str) -> String {
    let field = |name: &str| {
        fdinfo.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(|value| value.trim().to_string()))
    };
    match (field("link_type"), field("tp_name")) {
        (Some(kind), Some(tracepoint)) => format!("{kind} {tracepoint}"),
        (Some(kind), None) => kind,
        _ => "unknown link".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_raw_tracepoint_links() {
        let fdinfo = "pos:\t0\nflags:\t02000000\nlink_type:\traw_tracepoint\nlink_id:\t4993\nprog_id:\t7900\ntp_name:\tsys_enter\n";
        assert_eq!(describe(fdinfo), "raw_tracepoint sys_enter");
        assert_eq!(describe("link_type:\tcgroup\nattach_type:\t38\n"), "cgroup");
        assert_eq!(describe("pos:\t0\n"), "unknown link");
    }
}
