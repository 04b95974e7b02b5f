//! The event envelope every sink and observer sees, and the detection record type.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::deny::DenyRecord;
use super::losses::Named;

/// What happened: a flow verdict, a runtime-guard detection, or events dropped on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Payload {
    Flow(DenyRecord),
    Detection(Detection),
    /// `count` events of one owner were lost since the last such report: who, which events,
    /// where and why.
    Dropped(Named),
}

/// A runtime-guard detection on a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// Stable detection id, e.g. `escape.kernel-sysctl`.
    pub id: String,
    /// The detection's mode when it fired: `block` or `detect`.
    pub mode: String,
    /// `critical`, `high`, ...
    #[serde(default)]
    pub severity: String,
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The acting process (its tgid).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The acting process's executable: its path when the process could still be read in
    /// /proc, else its comm.
    #[serde(default)]
    pub executable: Option<String>,
    /// The acting process's command line, space-separated (when still readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The parent process: pid and executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_executable: Option<String>,
    /// The actor's container (id from the cgroup path) within the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What was touched, e.g. `/proc/sys/kernel/core_pattern`.
    #[serde(default)]
    pub evidence: Option<String>,
    /// `blocked` (the kernel refused it) or `detected` (reported only).
    #[serde(default)]
    pub action: String,
    /// Human-readable detail (the process, the path).
    pub message: String,
}

/// One event as reported: when, how many identical ones it stands for, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch, when the agent received (or, for an aggregate,
    /// closed the window of) the event.
    pub time_unix_ms: u64,
    /// How many identical events this one stands for: 1, or the number folded into it.
    pub count: u64,
    /// True for a report closing an aggregation window (the first event was reported alone).
    pub aggregated: bool,
    /// For a flood folded into one report: how many remote ports and addresses it touched
    /// (the report's remote address, pod and both ports are then left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    #[serde(flatten)]
    pub payload: Payload,
}

/// What a folded flood touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Spread {
    /// Distinct remote ports.
    pub remote_ports: u32,
    pub remote_port_min: u16,
    pub remote_port_max: u16,
    /// Distinct remote addresses (at most `flood::MAX_ADDRESSES` are told apart).
    pub remote_addresses: u32,
}

impl Event {
    pub fn new(payload: Payload) -> Self {
        Self { time_unix_ms: now_unix_ms(), count: 1, aggregated: false, spread: None, payload }
    }

    /// The identity used for aggregation: everything but the time and the count.
    pub fn key(&self) -> String {
        serde_json::to_string(&self.payload).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
